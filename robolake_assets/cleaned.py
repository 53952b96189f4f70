"""Cleaned layer: per-sensor Delta tables, aligned frames and quality reports.

One multi-asset decodes each upload once and writes all six tables of the
partition; quality thresholds and Great Expectations suites are its checks.
"""

import time

import dagster as dg

from robolake import cleaned, contract, expectations, spark_engine
from robolake.tables import partition_rows
from robolake_assets.automation import after_deps_update
from robolake_assets.helpers import (
    CLEANED_ASSET_KINDS,
    column_lineage,
    column_schema,
    governed,
    markdown_list,
)
from robolake_assets.metadata import count_metadata, figure, figures
from robolake_partitions import daily_robot_type_partitions, split_key
from robolake_resources import pools
from robolake_resources.lake import LakeResource
from robolake_resources.spark import EngineResource, SparkSessionResource

DESCRIPTIONS = {
    "cleaned_imu": f"IMU samples: duplicates and |a| > {contract.IMU_OUTLIER_NORM:g} m/s² "
                   "outliers removed",
    "cleaned_gps": "GPS fixes: duplicates and invalid fixes (no fix, NaN) removed",
    "cleaned_lidar": f"LiDAR frames: kept points (<= {contract.LIDAR_MAX_RANGE_M:g} m), range "
                     "stats, payload ref",
    "cleaned_camera_frames": "Camera frame index: size, black flag, ref (brightness with "
                             "ROBOLAKE_CAMERA_BRIGHTNESS on, else null)",
    "cleaned_aligned_frames": "One row per LiDAR frame with camera, IMU and GPS aligned to it "
                              "(data contract)",
    "cleaned_quality_reports": "Per-upload quality metrics and rule counts",
}
# quality thresholds: ERROR ones block datasets built on bad data, WARN ones flag
QUALITY_CHECKS = {
    "null_rate": dg.AssetCheckSeverity.ERROR,
    "max_gap": dg.AssetCheckSeverity.ERROR,
    "outlier_rate": dg.AssetCheckSeverity.WARN,
    "duplicate_rate": dg.AssetCheckSeverity.WARN,
    "latency": dg.AssetCheckSeverity.WARN,
}
METRIC_OF = {"null_rate": "null_rate", "max_gap": "max_gap_s", "outlier_rate": "outlier_rate",
             "duplicate_rate": "duplicate_rate", "latency": "latency_s"}
GX_ASSETS = ("cleaned_imu", "cleaned_gps", "cleaned_lidar", "cleaned_camera_frames",
             "cleaned_aligned_frames")

def _arrow_schema(kind: str):
    import polars as pl

    return pl.DataFrame(schema=cleaned.SCHEMAS[kind]).to_arrow().schema


_CHECK_SPECS = [
    *[dg.AssetCheckSpec(name, asset="cleaned_quality_reports",
                        blocking=severity == dg.AssetCheckSeverity.ERROR,
                        description=f"partition {METRIC_OF[name]} within the contract")
      for name, severity in QUALITY_CHECKS.items()],
    *[dg.AssetCheckSpec("great_expectations", asset=name, blocking=True,
                        description=f"GX suite {name}") for name in GX_ASSETS],
]


@dg.multi_asset(
    name="cleaned_layer",
    # a raw partition materialized on its own (UI, backfill, any day) is cleaned right after
    specs=[dg.AssetSpec(name, deps=["raw_uploads"], group_name="cleaned",
                        description=DESCRIPTIONS[name], kinds={"delta", "polars"},
                        automation_condition=after_deps_update,
                        **governed(cleaned.TABLES[kind], _arrow_schema(kind)))
           for name, kind in CLEANED_ASSET_KINDS.items()],
    check_specs=_CHECK_SPECS,
    partitions_def=daily_robot_type_partitions,
    **pools.cpu_spot(),
)
def cleaned_layer(context: dg.AssetExecutionContext, lake: LakeResource,
                  engine: EngineResource, pyspark: SparkSessionResource):
    day, robot_type = split_key(context.partition_key)
    # a run cleans the partition's new uploads; this tag (a backfill after a rule change)
    # cleans every upload of the partition again
    reclean = context.run.tags.get(cleaned.RECLEAN_TAG, "").lower() in ("1", "true", "yes")
    with pools.retry_only_transient():
        lake_store = lake.store()
        input_bytes = spark_engine.partition_input_bytes(lake_store, day, robot_type, reclean)
        chosen = spark_engine.choose_engine(engine.engine, input_bytes, engine.min_bytes())
        context.log.info(f"engine {chosen} ({engine.engine}): {input_bytes} bytes to decode"
                         + (" (re-clean of every upload)" if reclean else ""))
        started = time.perf_counter()
        if chosen == "spark":
            result, run = spark_engine.clean_partition_spark(
                pyspark.spark_session, lake_store, day, robot_type, log=context.log.info,
                reclean=reclean)
            engine_metadata = {"tasks": run.tasks, "retried_tasks": run.retried_tasks,
                               "executors": run.executors}
        else:
            result = cleaned.clean_partition(lake_store, day, robot_type, log=context.log.info,
                                             reclean=reclean)
            # several uploads: one per process (ROBOLAKE_DECODE_WORKERS), else one task
            engine_metadata = {"tasks": len(result.uploads) if result.processes > 1 else 1,
                               "executors": result.processes}
        seconds = time.perf_counter() - started
    rows = sum(result.frames[k].height for k in spark_engine.ROW_TABLES)
    engine_metadata.update({"engine": chosen, "input_bytes": input_bytes,
                            "rows_per_s": figure(rows / seconds if seconds else 0.0),
                            "uploads_cleaned": len(result.uploads),
                            "uploads_in_partition": len(result.partition_reports),
                            "reclean": reclean})
    metrics = result.metrics
    frames = {}
    for name, kind in CLEANED_ASSET_KINDS.items():
        frame = result.frames[kind]
        frames[name] = frame
        metadata = {
            # the partition's rows in the table (earlier runs' uploads included)
            "dagster/row_count": partition_rows(lake_store, cleaned.TABLES[kind],
                                                {"date": day, "robot_type": robot_type}),
            "rows_written": frame.height,
            "dagster/column_schema": column_schema(frame.to_arrow().schema,
                                                   cleaned.TABLES[kind]),
            "dagster/uri": lake_store.table_uri(cleaned.TABLES[kind]),
            "delta_version": result.versions[kind],
            **column_lineage(cleaned.TABLES[kind]),
            **engine_metadata,
        }
        if kind == "report":
            metadata.update(figures(metrics))
            metadata.update(count_metadata(result.counts))
        if kind == "aligned" and frame.height:
            metadata["camera_match_rate"] = figure(frame["camera_ts_ns"].is_not_null().mean())
            metadata["gps_coverage"] = figure(frame["gps_lat"].is_not_null().mean())
        yield dg.MaterializeResult(asset_key=name, metadata=metadata)

    passed = cleaned.check_report(metrics) if result.partition_reports else {}
    for check, severity in QUALITY_CHECKS.items():
        yield dg.AssetCheckResult(
            asset_key="cleaned_quality_reports", check_name=check, severity=severity,
            passed=passed.get(check, True),
            metadata={METRIC_OF[check]: figure(metrics[METRIC_OF[check]]),
                      "partition": str(context.partition_key)})
    for name in GX_ASSETS:
        suite = expectations.validate(name, frames[name])
        yield dg.AssetCheckResult(
            asset_key=name, check_name="great_expectations", passed=suite.success,
            metadata={"expectations": suite.evaluated, "failed": len(suite.failed),
                      "failures": markdown_list(suite.failed),
                      "partition": str(context.partition_key)})
