"""Dataset builds on the Spark engine: the same build, its two heavy parts on Spark.

- **Reading at scale.** The two big inputs (`features/corner_cases`, a row per aligned
  frame, and `cleaned/imu`) are read at their pinned Delta version with
  `spark.read.parquet` over exactly the files delta-rs lists for that version (no
  delta-spark jars needed), with the spec's partition filters applied by Spark, and cast
  back to the table's schema: the rows, and so the cache keys and the input fingerprint,
  are the ones the in-process read gives.
- **IMU rows stay on the executors.** The IMU table (100 rows a second per robot, the
  biggest input) never reaches the driver: per recording, a task reads the files of the
  pinned version that can hold its rows (the driver picks them from the version's file
  statistics) and sends back only their `rows_digest` for the cache key; the feature
  tasks read their recording's rows the same way.
- **Features as Spark tasks.** Recordings that miss the feature cache are computed one per
  Spark task by `build.compute_features` (the function the in-process build calls),
  each task writing its cache entry under the same key; the driver then reads them as
  cache entries. A task that dies is retried by Spark; an entry is written whole or not
  at all, and equal keys hold equal bytes, so a retry or a concurrent build is harmless.

`build.build_dataset(lake, spec, spark=session)` uses this module; it never imports
Dagster, and imports pyspark only inside functions.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import polars as pl

from robolake.cleaned import TABLES
from robolake.spark_engine import shipped_options
from robolake.storage import Store, open_store
from robolake.tables import add_actions, open_table

IMU_TABLE = TABLES["imu"]


def input_bytes(lake: Store, spec) -> int:
    """Bytes of the files of the tables a build of `spec` reads (their current versions):
    what the `auto` engine compares with its threshold."""
    from robolake.datasets.build import input_tables

    total = 0
    for key in input_tables(spec):
        table = open_table(lake, key)
        if table is not None:
            total += sum(table.get_add_actions(flatten=True).column("size_bytes").to_pylist())
    return total


def _spark_condition(filters: Sequence[tuple[str, str, object]]):
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for column, op, value in filters:
        col = F.col(column)
        condition &= {"in": lambda c, v: c.isin(list(v)), ">=": lambda c, v: c >= v,
                      "<=": lambda c, v: c <= v}[op](col, value)
    return condition


def read_version(spark, lake: Store, key: str, version: int, columns: Sequence[str] | None,
                 filters: Sequence[tuple[str, str, object]]) -> pl.DataFrame:
    """`columns` (None: all) of the rows of table `key` at `version` that pass `filters`
    ((column, op, value) with op in `in`, `>=`, `<=`), read by Spark from the version's
    files."""
    table = open_table(lake, key)
    assert table is not None, key
    table.load_as_version(version)
    schema = pl.scan_delta(lake.table_uri(key), version=version,
                           storage_options=lake.delta_options or None).collect_schema()
    columns = list(columns or schema)
    schema = {c: schema[c] for c in columns}
    files = [u.replace("s3://", "s3a://", 1) for u in table.file_uris()]
    if not files:
        return pl.DataFrame(schema=schema)
    # partition values come from the hive-style paths: keep them strings as Delta has them
    spark.conf.set("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
    root = lake.table_uri(key).replace("s3://", "s3a://", 1)
    frame = (spark.read.option("basePath", root).parquet(*files)
             .where(_spark_condition(filters)).select(*columns))
    out = pl.from_arrow(frame.toArrow())
    assert isinstance(out, pl.DataFrame)
    return out.cast(schema)


# --------------------------------------------------------------------------- feature tasks


def imu_files(lake: Store, spec, version: int, upload_ids: list[str]) -> dict[str, list[str]]:
    """Per recording, the files of the IMU table at `version` that can hold its rows: in the
    spec's robot type and region partitions, with the recording's id inside the file's
    upload_id statistics."""
    from robolake.datasets.build import imu_filters

    table = open_table(lake, IMU_TABLE)
    assert table is not None, IMU_TABLE
    table.load_as_version(version)
    adds = add_actions(table)
    for column, _op, values in imu_filters(spec):  # robot type / region: "in"
        adds = adds.filter(pl.col(f"partition.{column}").is_in(list(values)))
    out = {}
    for u in upload_ids:
        held = adds
        if "min.upload_id" in adds.columns:
            held = adds.filter(pl.col("min.upload_id").is_null()
                               | ((pl.col("min.upload_id") <= u) & (pl.col("max.upload_id") >= u)))
        out[u] = held["path"].to_list()
    return out


def read_main_imu(lake: Store, files: list[str], upload_id: str) -> pl.DataFrame:
    """A recording's `build.main_imu` rows, read from `files` (as `imu_files` gives them)."""
    from robolake.datasets.build import IMU_COLUMNS, IMU_READ_COLUMNS, main_imu

    schema = {"upload_id": pl.String, "topic": pl.String, "ts_ns": pl.Int64,
              **{c: pl.Float64 for c in IMU_COLUMNS}}
    parts = [pl.read_parquet(io.BytesIO(lake.read_bytes(f"{IMU_TABLE}/{unquote(f)}")),
                             columns=IMU_READ_COLUMNS).cast(schema)
             .filter(pl.col("upload_id") == upload_id) for f in files]
    return main_imu(pl.concat(parts) if parts else pl.DataFrame(schema=schema))


@dataclass(frozen=True)
class ImuTask:
    """One recording whose IMU rows a task reads (plain values: shipped to executors)."""

    lake_uri: str
    store_options: dict[str, str] | None
    upload_id: str
    files: list[str]


def imu_digest_task(task: ImuTask) -> tuple[str, bytes]:
    """Run in a Spark task: the `rows_digest` of one recording's main IMU rows."""
    from robolake.datasets.build import rows_digest

    lake = open_store(task.lake_uri, task.store_options)
    return task.upload_id, rows_digest(read_main_imu(lake, task.files, task.upload_id))


def imu_digests(spark, lake: Store, spec, version: int, upload_ids: list[str]) -> dict[str, bytes]:
    """Each recording's IMU digest, computed in Spark tasks (the rows stay there)."""
    if not upload_ids:
        return {}
    files = imu_files(lake, spec, version, upload_ids)
    options = shipped_options(lake)
    tasks = [ImuTask(lake.uri, options, u, files[u]) for u in upload_ids]
    return dict(spark.sparkContext.parallelize(tasks, numSlices=len(tasks))
                .map(imu_digest_task).collect())


# --------------------------------------------------------------------------- feature tasks


@dataclass(frozen=True)
class FeatureTask:
    """One recording whose features the cache lacks (plain values: shipped to executors)."""

    lake_uri: str
    store_options: dict[str, str] | None
    spec: object  # DatasetSpec (pickled)
    versions: dict[str, int]
    upload_id: str
    cache_key: str
    frames: pl.DataFrame  # the recording's main-topic frames, `_sampled` marking samples
    imu_files: list[str] | None  # where its IMU rows are, when the spec reads IMU


def feature_task(task: FeatureTask) -> tuple[str, float]:
    """Run in a Spark task: one recording's features into the cache under its key."""
    from robolake.datasets.build import FeatureCache, compute_features

    started = time.perf_counter()
    lake = open_store(task.lake_uri, task.store_options)
    imu = (read_main_imu(lake, task.imu_files, task.upload_id)
           if task.imu_files is not None else None)
    features = compute_features(lake, task.spec, task.versions, task.upload_id, task.frames,
                                imu)
    FeatureCache(lake).put(task.cache_key, task.upload_id, features)
    return task.upload_id, time.perf_counter() - started


def compute_missing_features(spark, lake: Store, spec, versions: dict[str, int],
                             missing: list[tuple[str, str, pl.DataFrame]], log) -> float:
    """Features of the recordings the cache lacks, `(upload_id, cache key, frames)` each,
    computed in Spark tasks into the cache; returns the summed task seconds."""
    if not missing:
        return 0.0
    options = shipped_options(lake)
    ids = [u for u, _, _ in missing]
    files = (imu_files(lake, spec, versions[IMU_TABLE], ids) if spec.features.imu_window
             else {})
    tasks = [FeatureTask(lake.uri, options, spec, versions, u, key, frames, files.get(u))
             for u, key, frames in missing]
    sc = spark.sparkContext
    log(f"computing the features of {len(tasks)} recording(s) in Spark tasks "
        f"(Spark UI: {sc.uiWebUrl})")
    done = sc.parallelize(tasks, numSlices=len(tasks)).map(feature_task).collect()
    return sum(seconds for _, seconds in done)
