"""Datasets layer: one asset per dataset spec in the specs folder.

A new YAML file in the specs folder (`ROBOLAKE_SPECS`, default ./specs; see
`robolake.settings`) becomes an asset `datasets/<name>` when the code location
reloads; no code changes. A spec that
does not validate stops the code location from loading with the spec's error,
so a typo never silently drops a dataset.
"""

from pathlib import Path

import dagster as dg

from robolake.cleaned import TABLES
from robolake.datasets.build import (
    DatasetVersionExists,
    QualityGateFailed,
    build_dataset,
)
from robolake.datasets.spark_build import input_bytes
from robolake.datasets.spec import DatasetSpec, load_spec
from robolake.governance import catalog
from robolake.governance.search import spec_features
from robolake.spark_engine import choose_engine
from robolake_assets.helpers import (
    DATASETS_GROUP,
    cleaned_asset_of_table,
    dataset_asset_key,
    dataset_column_lineage,
    markdown_table,
    require_owner_tags,
)
from robolake_partitions import dataset_version_partitions
from robolake_resources import pools
from robolake_resources.lake import LakeResource
from robolake_resources.spark import EngineResource, SparkSessionResource

GROUP = DATASETS_GROUP


def load_specs(folder: Path) -> list[tuple[Path, DatasetSpec]]:
    """Every spec in the folder (sorted by file name); two specs with one name are an error."""
    specs = [(p, load_spec(p)) for p in sorted(folder.glob("*.y*ml"))] if folder.is_dir() else []
    seen: dict[str, Path] = {}
    for path, spec in specs:
        if spec.name in seen:
            raise ValueError(f"{path}: dataset name {spec.name!r} is already used by "
                             f"{seen[spec.name]}")
        seen[spec.name] = path
    return specs


def _metadata(manifest: dict, created: bool, store) -> dict:
    splits = manifest["splits"]
    groups = sorted({g for s in splits.values() for g in s["groups"]})
    scenarios = sorted({g for s in splits.values() for g in s["scenarios"]})
    meta = {
        "version": manifest["version"],
        "built_now": created,
        "spec_hash": manifest["spec_hash"],
        "dagster/uri": store.table_uri(f"datasets/{manifest['name']}/{manifest['version']}"),
        "dagster/row_count": sum(s["samples"] for s in splits.values()),
        "input_delta_versions": dg.MetadataValue.json(manifest["inputs"]),
        "missing_rate": float(manifest["quality"]["missing_rate"]),
        "cache_hits": manifest["cache"]["hits"],
        "cache_misses": manifest["cache"]["misses"],
        **dataset_column_lineage(spec_features(manifest["spec"])),
        "samples": dg.MetadataValue.md(markdown_table(
            ["split", "samples", "recordings", "shards", *groups],
            [(name, s["samples"], s["recordings"], len(s["shards"]),
              *(s["groups"].get(g, 0) for g in groups)) for name, s in splits.items()])),
        "scenarios": dg.MetadataValue.md(markdown_table(
            ["split", *scenarios],
            [(name, *(s["scenarios"].get(g, 0) for g in scenarios))
             for name, s in splits.items()])),
    }
    for name, s in splits.items():
        meta[f"{name}_samples"] = s["samples"]
    return meta


def build_dataset_asset(path: Path, spec: DatasetSpec) -> dg.AssetsDefinition:
    tables = {*spec.sources.tables, TABLES["aligned"]}
    tables |= {TABLES["imu"]} if spec.features.imu_window else set()
    tables |= {TABLES["lidar"]} if spec.features.lidar else set()
    tables |= {TABLES["camera"]} if spec.features.camera else set()
    key = dataset_asset_key(spec.name)
    level = catalog.dataset_classification(spec_features(spec.model_dump(mode="json")))
    deps = ["corner_case_scores", "cleaned_quality_reports",
            *sorted(cleaned_asset_of_table(t) for t in tables)]

    @dg.asset(
        key=key,
        group_name=GROUP,
        deps=deps,
        kinds={"webdataset", "pytorch"},
        code_version=spec.spec_hash[:16],  # the UI marks the asset changed when the spec does
        description=f"{spec.description or spec.name} (spec {path.name}, version "
                    f"{spec.version})",
        check_specs=[dg.AssetCheckSpec("every_split_has_samples", asset=key,
                                       description="train, val and test all hold samples")],
        metadata={"spec_file": str(path), "classification": level},
        owners=[catalog.OWNERS["ml"]],
        tags={"classification": level, "layer": "datasets"},
        **pools.cpu_spot(),
    )
    def _dataset(context: dg.AssetExecutionContext, lake: LakeResource, engine: EngineResource,
                 pyspark: SparkSessionResource):
        require_owner_tags(context)
        store = lake.store()
        current = load_spec(path)  # the file may have changed since the code location loaded
        chosen = choose_engine(engine.engine, input_bytes(store, current), engine.min_bytes())
        context.log.info(f"engine: {chosen}")
        spark = pyspark.spark_session if chosen == "spark" else None
        with pools.retry_only_transient():  # passes the refusal's dg.Failure through
            try:
                result = build_dataset(store, current, log=context.log.info, spark=spark)
            except (DatasetVersionExists, QualityGateFailed) as exc:
                # a refusal is not transient: no retries, and its own words
                raise dg.Failure(description=str(exc), allow_retries=False) from None
        # the version is registered: the model assets get a partition for it
        versions = dataset_version_partitions(current.name)
        if not context.instance.has_dynamic_partition(versions.name, current.version):
            context.instance.add_dynamic_partitions(versions.name, [current.version])
        splits = result.manifest["splits"]
        empty = [s for s, v in splits.items() if not v["samples"]]
        wanted = current.output.splits.model_dump()
        empty = [s for s in empty if wanted.get(s, 0) > 0]
        yield dg.MaterializeResult(metadata={**_metadata(result.manifest, result.created, store),
                                             "engine": chosen})
        yield dg.AssetCheckResult(check_name="every_split_has_samples", passed=not empty,
                                  severity=dg.AssetCheckSeverity.WARN,
                                  metadata={"empty_splits": ", ".join(empty) or "none"})

    return _dataset


def build_dataset_assets(folder: Path) -> list[dg.AssetsDefinition]:
    """One asset per spec in `folder` (the settings' specs_dir)."""
    return [build_dataset_asset(path, spec) for path, spec in load_specs(folder)]
