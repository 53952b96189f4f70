"""The pipeline's layers, a plain module so the CLI's help lists them without importing
Dagster or the domain's heavy modules."""

# Layers in pipeline order; each is an asset group. The first ones are partitioned by
# (date, robot type) and run per partition; datasets span those partitions and run once;
# models are partitioned by dataset version.
PARTITIONED_LAYERS = ("raw", "cleaned", "features")
LAYERS = (*PARTITIONED_LAYERS, "datasets", "models")
