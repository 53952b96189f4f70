"""The Spark engine (robolake/spark_engine.py) against the local engine: identical tables.

Spark runs `local[2,2]` (two cores, two attempts per task) with its UI off: the machine
is shared. Each lake is ingested once, copied, and cleaned by each engine, so the raw
layer (upload ids, arrival times) is the same bytes for both.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from robolake import cleaned, raw, spark_engine
from robolake.simulate import RobotIdentity, simulate_fleet, simulate_recording
from robolake.storage import open_store
from robolake.tables import open_table, read_table
from tests.conftest import land

DAY = "2026-11-20"
VOLATILE = {"cleaned_ns", "latency_s"}  # when a run cleaned: differs between any two runs


@pytest.fixture(scope="module")
def spark():
    pyspark_sql = pytest.importorskip("pyspark.sql")
    # workers run PYSPARK_PYTHON (as SparkSessionResource sets it), not python3 on PATH
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from robolake_resources.spark import spark_config

    conf = {**spark_config("local[2,2]", "robolake-tests"), "spark.ui.enabled": "false",
            "spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "2"}
    builder = pyspark_sql.SparkSession.builder
    for k, v in conf.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    frame = frame.drop(VOLATILE, strict=False)
    return frame.sort([c for c, t in frame.schema.items() if not t.is_nested()])


def _tables(lake_dir: Path | str) -> dict[str, pl.DataFrame]:
    lake = open_store(lake_dir)
    out = {}
    for kind, key in cleaned.TABLES.items():
        table = read_table(lake, key)
        assert table is not None, key
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        out[kind] = _sorted(frame)
    return out


def assert_same_tables(a: Path | str, b: Path | str) -> None:
    ta, tb = _tables(a), _tables(b)
    for kind in cleaned.TABLES:
        assert_frame_equal(ta[kind], tb[kind], check_exact=True)
    lake_a, lake_b = open_store(a), open_store(b)
    for key in cleaned.TABLES.values():  # same Delta schema, same partitioning
        da, db = open_table(lake_a, key), open_table(lake_b, key)
        assert da.schema() == db.schema()
        assert da.metadata().partition_columns == db.metadata().partition_columns


def _ns(day: str, hms: str) -> int:
    return int(datetime.fromisoformat(f"{day}T{hms}+00:00").timestamp()) * 1_000_000_000


def _ingested(tmp: Path, landing: Path) -> tuple[Path, list[tuple[str, str]]]:
    lake_dir = tmp / "lake-raw"
    parts = sorted(raw.ingest_landing(open_store(landing), open_store(lake_dir)))
    return lake_dir, parts


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _clean_local(lake_dir: Path, parts) -> list[cleaned.PartitionResult]:
    return [cleaned.clean_partition(open_store(lake_dir), *p) for p in parts]


def _clean_spark(spark, lake_dir: Path, parts, hook=None, reclean=False):
    return [spark_engine.clean_partition_spark(spark, open_store(lake_dir), *p, task_hook=hook,
                                               reclean=reclean)
            for p in parts]


@pytest.fixture(scope="module")
def fleet_day(tmp_path_factory):
    """Two simulated robots of one type, a minute each (one partition, two uploads), with
    duplicate messages and IMU spikes; ingested once, cleaned by the local engine."""
    tmp = tmp_path_factory.mktemp("fleet")
    simulate_fleet(tmp / "landing", robots=2, date=DAY, minutes=1.0, seed=3,
                   faults=["duplicate_messages", "imu_spikes:0"], robot_types=["delivery"])
    lake_dir, parts = _ingested(tmp, tmp / "landing")
    local = _copy(lake_dir, tmp / "lake-local")
    return lake_dir, parts, local, _clean_local(local, parts)


def test_spark_engine_equals_local_on_a_fleet_day_and_reruns_change_nothing(
        spark, fleet_day, tmp_path: Path):
    lake_dir, parts, local, [local_result] = fleet_day
    assert parts == [(DAY, "delivery")]
    lake = _copy(lake_dir, tmp_path / "lake-spark")
    [(result, run)] = _clean_spark(spark, lake, parts)
    assert (run.tasks, run.retried_tasks) == (2, 0)
    assert run.input_bytes > 0 and run.rows == sum(
        result.frames[k].height for k in spark_engine.ROW_TABLES) > 0
    assert_same_tables(local, lake)
    # the rows the result hands the asset's checks (read from the committed part files when
    # asked for) are the local engine's
    assert list(result.frames) == list(cleaned.TABLES)
    for kind in cleaned.TABLES:
        assert_frame_equal(_sorted(result.frames[kind]), _sorted(local_result.frames[kind]),
                           check_exact=True)
    # the metrics the asset reports are the local engine's too (but when it ran)
    assert ({k: v for k, v in result.metrics.items() if k != "latency_s"}
            == {k: v for k, v in local_result.metrics.items() if k != "latency_s"})
    assert result.counts == local_result.counts
    # a re-run finds nothing new: no task, no commit
    versions = {k: open_table(open_store(lake), key).version()
                for k, key in cleaned.TABLES.items()}
    [(idle, idle_run)] = _clean_spark(spark, lake, parts)
    assert (idle_run.tasks, idle.versions, idle.uploads) == (0, versions, [])
    assert idle.metrics == result.metrics
    # a re-clean replaces the uploads' rows: same rows, one commit per table
    [(again, _)] = _clean_spark(spark, lake, parts, reclean=True)
    assert again.versions == {k: v + 1 for k, v in versions.items()}
    assert_same_tables(local, lake)


def test_switching_engines_on_one_lake_replaces_the_local_engines_files(spark, fleet_day,
                                                                       tmp_path: Path):
    lake_dir, parts, local, _ = fleet_day
    lake = _copy(local, tmp_path / "lake-both")  # already cleaned by the local engine
    _clean_spark(spark, lake, parts, reclean=True)
    assert_same_tables(local, lake)
    for key in spark_engine.ROW_TABLES:  # every committed file is now the Spark run's
        files = open_table(open_store(lake), cleaned.TABLES[key]).file_uris()
        assert files and all("part-spark-" in f for f in files), key


def test_replace_files_rewrites_a_file_that_mixes_uploads(tmp_path: Path):
    from deltalake import write_deltalake

    from robolake.tables import commit_files, replace_files, write_part_files

    lake = open_store(tmp_path)
    rows = pl.DataFrame({"upload_id": ["a", "a", "b"], "ts_ns": [1, 2, 3],
                         "robot_type": ["t", "t", "t"]})
    write_deltalake(lake.table_uri("t"), rows.to_arrow(), partition_by=["robot_type"])
    new = pl.DataFrame({"upload_id": ["a"], "ts_ns": [9], "robot_type": ["t"]})

    def plan(snap):
        change = replace_files(lake, "t", snap.table, "upload_id", ["a"], {"robot_type": "t"})
        assert len(change.removes) == 1 and len(change.adds) == 1  # "b" is rewritten
        change.adds += write_part_files(lake, "t", new, ["robot_type"], "test")
        return change

    assert commit_files(lake, "t", plan, rows.to_arrow().schema, ["robot_type"]) == 1
    got = pl.from_arrow(read_table(lake, "t")).sort("ts_ns")
    assert got.select("upload_id", "ts_ns").rows() == [("b", 3), ("a", 9)]


def test_spark_engine_equals_local_on_real_recordings_and_overlapping_uploads(
        spark, shared_data: Path, tmp_path: Path):
    landing = tmp_path / "landing"
    husky = {"robot_id": "husky-1", "robot_type": "ugv", "region": "us-east"}
    # the same drive as a ROS 1 bag and as an MCAP (the raw layer keeps one), a LiDAR
    # bag, and a ULog (indexed, not decoded)
    land(landing, shared_data / "robot_localization_test1_husky.bag", husky)
    land(landing, shared_data / "husky_ros2_converted.mcap", husky)
    land(landing, shared_data / "sick_rms1000_lms1000_movement_off.bag",
         {"robot_id": "sick-1", "robot_type": "ugv", "region": "us-east"})
    land(landing, shared_data / "pyulog_sample_log_small_cubeorange.ulg",
         {"robot_id": "vtol-1", "robot_type": "ugv", "region": "us-east"})
    # overlap in one partition: two simulated fleets both hold robot-000 at 08:00
    for seed in (1, 2):
        simulate_fleet(landing / f"seed{seed}", robots=1, date=DAY, minutes=0.1, seed=seed,
                       robot_types=["delivery"])
    # overlap with rows already in the table: a recording crossing midnight, and one of
    # the same robot in the next day's partition
    robot = RobotIdentity("robot-042", "delivery", "eu-west")
    simulate_recording(landing, robot, _ns(DAY, "23:59:50"), 20.0, seed=9)
    simulate_recording(landing, robot, _ns("2026-11-21", "00:00:00"), 5.0, seed=9)
    lake_dir, parts = _ingested(tmp_path, landing)
    assert parts[-2:] == [(DAY, "delivery"), ("2026-11-21", "delivery")]
    local = _copy(lake_dir, tmp_path / "lake-local")
    local_results = _clean_local(local, parts)
    lake = _copy(lake_dir, tmp_path / "lake-spark")
    spark_results = _clean_spark(spark, lake, parts)
    assert sum(r.frames["imu"].height for r in local_results) > 10_000
    assert sum(r.frames["lidar"].height for r in local_results) > 0
    overlap = [r.counts.get("imu_overlap", 0) for r in local_results]
    assert overlap[-2] > 0 and overlap[-1] > 0, overlap  # both overlap paths were taken
    assert_same_tables(local, lake)
    for lr, (sr, _) in zip(local_results, spark_results, strict=True):
        assert lr.counts == sr.counts


def test_a_task_killed_on_its_first_attempt_is_retried_and_its_files_never_committed(
        spark, fleet_day, tmp_path: Path):
    lake_dir, parts, local, _ = fleet_day
    lake = _copy(lake_dir, tmp_path / "lake-spark")
    victim = cleaned.partition_uploads(open_store(lake), *parts[0])[1][0].upload_id

    def die_on_first_attempt(upload_id: str, attempt: int) -> None:
        # after the task wrote its part files: the Python worker dies, as on a lost executor
        if upload_id == victim and attempt == 0:
            os._exit(17)

    [(_, run)] = _clean_spark(spark, lake, parts, hook=die_on_first_attempt)
    assert (run.tasks, run.retried_tasks) == (2, 1)
    assert_same_tables(local, lake)
    store = open_store(lake)
    for key in spark_engine.ROW_TABLES:
        table_dir = lake / cleaned.TABLES[key]
        on_disk = {p.relative_to(table_dir).as_posix() for p in table_dir.rglob("*.parquet")}
        committed = {Path(u).relative_to(table_dir).as_posix()
                     for u in open_table(store, cleaned.TABLES[key]).file_uris()}
        dead = {p for p in on_disk if f"spark-{victim[:12]}-a0" in p}
        assert dead, f"the killed attempt wrote no {key} files"  # it died after writing
        assert not dead & committed
        assert {p for p in committed if f"spark-{victim[:12]}-a1" in p}
        # maintenance's full VACUUM deletes them once past its retention (here: now)
        doomed = open_table(store, cleaned.TABLES[key]).vacuum(
            retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True)
        assert {Path(d).name for d in dead} <= {Path(d).name for d in doomed}


def test_python_workers_fork_from_a_daemon_with_robolake_imported(spark):
    """spark.python.daemon.module: each Python worker is forked from robolake.spark_daemon,
    which imported the cleaned layer before forking (a worker's first task imports none)."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("no /proc to read a worker's parent from")

    def origin(_: int) -> tuple[str, bool]:  # runs in a worker (shipped by value)
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode()
        return parent, "robolake.spark_engine" in sys.modules

    origins = spark.sparkContext.parallelize(range(2), 2).map(origin).collect()
    for parent, imported in origins:
        assert "-m robolake.spark_daemon" in parent and imported, (parent, imported)


def test_engine_choice_and_settings():
    assert spark_engine.choose_engine("auto", 10, 100) == "local"
    assert spark_engine.choose_engine("auto", 101, 100) == "spark"
    assert spark_engine.choose_engine("spark", 0, 100) == "spark"
    assert spark_engine.choose_engine("local", 10**12, 100) == "local"
    from robolake.settings import Settings

    s = Settings.from_env({"ROBOLAKE_ENGINE": "Spark", "ROBOLAKE_SPARK_MIN_BYTES": "1000",
                           "ROBOLAKE_SPARK_MASTER": "local[1,2]"})
    assert (s.engine, s.spark_min_bytes, s.spark_master) == ("spark", 1000, "local[1,2]")


def test_cleaned_asset_reports_the_engine_that_ran(spark, tmp_path: Path, monkeypatch):
    """Through Dagster: `auto` above ROBOLAKE_SPARK_MIN_BYTES runs Spark (the session from
    the code location's PySparkResource: here the test's, already started)."""
    import dagster as dg

    from robolake.settings import Settings
    from robolake_assets.definitions import build_definitions
    from robolake_partitions import partition_key

    monkeypatch.setenv("ROBOLAKE_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("ROBOLAKE_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("ROBOLAKE_ENGINE", "auto")
    monkeypatch.setenv("ROBOLAKE_SPARK_MIN_BYTES", "1000")
    simulate_fleet(tmp_path / "landing", robots=1, date=DAY, minutes=0.2, seed=5,
                   robot_types=["delivery"])
    job = build_definitions(Settings.from_env()).resolve_job_def("ingest_through_cleaned")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("robot_type", ["delivery"])
        result = job.execute_in_process(instance=instance,
                                        partition_key=partition_key(DAY, "delivery"))
    assert result.success
    mats = {m.asset_key.to_user_string(): m.materialization.metadata
            for m in result.get_asset_materialization_events()}
    aligned = mats["cleaned_aligned_frames"]
    assert aligned["engine"].value == "spark" and aligned["tasks"].value == 1
    assert aligned["input_bytes"].value > 1000 and aligned["rows_per_s"].value > 0
    assert aligned["dagster/row_count"].value == 120
    assert all(e.passed for e in result.get_asset_check_evaluations()
               if e.check_name == "great_expectations")


def test_spark_tasks_on_an_s3_lake(spark, s3_endpoint, tmp_path: Path, monkeypatch):
    """Tasks read raw files and write part files through the project's S3 store (boto3;
    credentials from the executors' environment, never shipped); delta-rs commits."""
    import boto3

    for k, v in s3_endpoint.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                      region_name="us-east-1")
    s3.create_bucket(Bucket="spark-lake")
    landing = tmp_path / "landing"
    simulate_fleet(landing, robots=2, date=DAY, minutes=0.2, seed=8, robot_types=["delivery"])
    parts = sorted(raw.ingest_landing(open_store(landing), open_store("s3://spark-lake/lake")))
    raw.ingest_landing(open_store(landing), open_store(tmp_path / "lake-local"))
    _clean_local(tmp_path / "lake-local", parts)
    # a cluster's executors get credentials from their pod; local workers from this map
    creds = {k: v for k, v in s3_endpoint.items() if k.startswith("AWS_")}
    sc = spark.sparkContext
    saved = dict(sc.environment)
    sc.environment.update(creds)
    try:
        [(_, run)] = _clean_spark(spark, "s3://spark-lake/lake", parts)
    finally:
        sc.environment.clear()
        sc.environment.update(saved)
    assert run.tasks == 2
    assert_same_tables(tmp_path / "lake-local", "s3://spark-lake/lake")


def _sensor_spec(version: str):
    from robolake.datasets.spec import parse_spec

    return parse_spec({
        "name": "sensors", "version": version, "description": "spark build test",
        "sources": {"tables": ["cleaned/aligned_frames", "cleaned/lidar", "cleaned/camera_frames"],
                    "dates": {"start": DAY, "end": DAY}},
        "features": {"imu_window": {"size": 10, "stride": 5}, "gps_trajectory": {"history": 5},
                     "lidar": {"voxel_size_m": 0.5, "range_crop_m": 30, "bev_cells": 16},
                     "camera": {"resize": [32, 24]}},
        "labels": {"kind": "ego_motion"},
        "output": {"shard_size_mb": 0.05, "splits": {"train": 0.5, "val": 0.5, "test": 0.0}},
        "quality_gates": {"min_samples": 10},
        "privacy": "approved",
        "approval": {"by": "tests", "when": "2026-12-01",
                     "reason": "test data from the simulator"}})


def test_dataset_build_on_spark_equals_the_local_build(spark, fleet_day, tmp_path: Path):
    """Pinned versions read by Spark from delta-rs's file list and features computed in
    Spark tasks give the version the in-process build gives, byte for byte, through the
    same feature cache keys."""
    from robolake.datasets.build import CACHE_PREFIX, build_dataset

    _, _, local, _ = fleet_day
    a, b = _copy(local, tmp_path / "lake-a"), _copy(local, tmp_path / "lake-b")
    built = build_dataset(open_store(a), _sensor_spec("1.0.0"))
    logs: list[str] = []
    on_spark = build_dataset(open_store(b), _sensor_spec("1.0.0"), log=logs.append, spark=spark)
    assert any("in Spark tasks" in m for m in logs)
    # the IMU rows (the biggest input) stayed on the executors: only their digests came back
    assert "IMU rows of 2 recording(s) hashed in Spark tasks" in logs
    assert (on_spark.cache_hits, on_spark.cache_misses) == (0, 2) == (built.cache_hits,
                                                                       built.cache_misses)
    volatile = {"created_ns"}
    assert ({k: v for k, v in on_spark.manifest.items() if k not in volatile}
            == {k: v for k, v in built.manifest.items() if k not in volatile})
    assert built.samples["train"] > 10 and built.samples["val"] > 10
    prefix = Path("datasets/sensors/1.0.0")
    for folder in (prefix, Path(CACHE_PREFIX)):
        files = sorted(p.relative_to(a) for p in (a / folder).rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(b) for p in (b / folder).rglob("*")
                                         if p.is_file())
        for f in files:
            if f.name != "manifest.json":
                assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # a new version of the same features on Spark: every recording from the cache
    again = build_dataset(open_store(b), _sensor_spec("1.0.1"), spark=spark)
    assert (again.cache_hits, again.cache_misses) == (2, 0)
