"""The raw layer through Dagster: the sensor's cursor, a partition run, the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from robolake_assets.definitions import defs
from robolake_assets.raw import raw_uploads
from robolake_partitions import partition_key
from robolake_resources.lake import LakeResource, LandingResource
from tests.conftest import land

HUSKY = {"robot_id": "husky-01", "robot_type": "husky", "region": "us-east"}
SICK = {"robot_id": "sick-01", "robot_type": "lidar_rig", "region": "eu-west"}
DRONE = {"robot_id": "vtol-01", "robot_type": "drone", "region": "eu-west"}


def _resources(landing: Path, lake: Path) -> dict:
    return {"landing": LandingResource(uri=str(landing)), "lake": LakeResource(root=str(lake))}


def _evaluate(instance, landing, lake, cursor=None) -> dg.SensorResult:
    sensor = defs.get_repository_def().get_sensor_def("new_uploads_sensor")
    with dg.build_sensor_context(instance_ref=instance.get_ref(), cursor=cursor, definitions=defs,
                                 resources=_resources(landing, lake)) as ctx:
        return sensor.evaluate_tick(ctx)


def _bump_mtime(path: Path, seconds_later: float) -> None:
    t = time.time() + seconds_later
    os.utime(path, (t, t))


def test_sensor_cursor_only_new_files_trigger_runs(shared_data: Path, dirs):
    landing, lake = dirs
    land(landing, shared_data / "husky_ros2_converted.mcap", HUSKY)
    land(landing, shared_data / "sick_rms1000_lms1000_movement_off.bag", SICK)
    with dg.instance_for_test() as instance:
        _check_sensor_ticks(instance, shared_data, landing, lake)


def _check_sensor_ticks(instance, shared_data: Path, landing: Path, lake: Path) -> None:
    first = _evaluate(instance, landing, lake)
    assert sorted(r.partition_key for r in first.run_requests) == [
        "2015-05-21|husky", "2022-09-23|lidar_rig"]
    assert [sorted(r.partition_keys) for r in first.dynamic_partitions_requests] == [
        ["husky", "lidar_rig"]]
    # restarting from the same cursor asks for the same runs (same run keys): no double launch
    again = _evaluate(instance, landing, lake)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]

    instance.add_dynamic_partitions("robot_type", ["husky", "lidar_rig"])
    idle = _evaluate(instance, landing, lake, first.cursor)
    assert idle.run_requests == [] and idle.skip_message == "no new uploads"

    # a file added later triggers exactly one more run, for its partition only
    later = land(landing, shared_data / "pyulog_sample_log_small_cubeorange.ulg", DRONE)
    _bump_mtime(later, 5)
    _bump_mtime(Path(f"{later}.meta.json"), 5)
    more = _evaluate(instance, landing, lake, idle.cursor)
    assert [r.partition_key for r in more.run_requests] == ["2021-04-21|drone"]
    assert [r.partition_keys for r in more.dynamic_partitions_requests] == [["drone"]]
    assert json.loads(more.cursor)["watermark_ns"] > json.loads(idle.cursor)["watermark_ns"]
    assert _evaluate(instance, landing, lake, more.cursor).run_requests == []

    # a sidecar arriving after its recording makes the recording new again
    orphan = land(landing, shared_data / "robot_localization_test1_husky.bag")
    _bump_mtime(orphan, 10)
    unidentified = _evaluate(instance, landing, lake, more.cursor)
    assert [r.partition_key.split("|")[1] for r in unidentified.run_requests] == ["unidentified"]
    Path(f"{orphan}.meta.json").write_text(json.dumps(HUSKY))
    _bump_mtime(Path(f"{orphan}.meta.json"), 20)
    identified = _evaluate(instance, landing, lake, unidentified.cursor)
    assert [r.partition_key for r in identified.run_requests] == ["2015-05-21|husky"]


def test_partition_run_metadata_and_checks(shared_data: Path, dirs):
    landing, lake = dirs
    land(landing, shared_data / "husky_ros2_converted.mcap", HUSKY)
    land(landing, shared_data / "robot_localization_test1_husky.bag", HUSKY)
    (landing / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 100)
    (landing / "broken.mcap.meta.json").write_text(json.dumps(HUSKY))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("robot_type", ["husky", "unidentified"])
    result = dg.materialize([raw_uploads], instance=instance,
                            partition_key=partition_key("2015-05-21", "husky"),
                            resources=_resources(landing, lake))
    assert result.success
    [mat] = result.asset_materializations_for_node("raw_uploads")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["dagster/row_count"] == 2
    # the bag is the MCAP converted: a content duplicate; the MCAP has no CRCs: flagged
    assert (meta["uploads_flagged"], meta["uploads_duplicate"], meta["uploads_quarantined"]) == (
        1, 1, 0)
    assert meta["messages"] == 2 * 16806
    assert "upload_id" in [c.name for c in mat.metadata["dagster/column_schema"].value.columns]
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"unique_uploads": True, "raw_files_present": True, "quarantine_rate": True}

    # the broken file (no readable start time) waits in its arrival-date partition
    today = time.strftime("%Y-%m-%d", time.gmtime((landing / "broken.mcap").stat().st_mtime))
    result = dg.materialize([raw_uploads], instance=instance,
                            partition_key=partition_key(today, "husky"),
                            resources=_resources(landing, lake))
    [mat] = result.asset_materializations_for_node("raw_uploads")
    assert mat.metadata["uploads_quarantined"].value == 1
    checks = {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}
    assert checks["quarantine_rate"] == (False, dg.AssetCheckSeverity.WARN)


def test_cli_ingest_records_runs_in_the_instance(shared_data: Path, tmp_path: Path, monkeypatch,
                                                 capsys):
    from robolake_assets.cli import main

    landing = tmp_path / "landing"
    land(landing, shared_data / "husky_ros2_converted.mcap", HUSKY)
    land(landing, shared_data / "sick_rms1000_lms1000_movement_off.bag", SICK)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    argv = ["ingest", "--through", "raw", "--landing", str(landing),
            "--lake", str(tmp_path / "lake")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 recording(s), 2 partition(s) to ingest" in out
    assert "accepted           1" in out and "flagged            1" in out
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert sorted(r.tags["dagster/partition"] for r in runs) == [
            "2015-05-21|husky", "2022-09-23|lidar_rig"]
        assert {r.job_name for r in runs} == {"ingest_through_raw"}
        assert all(r.is_success for r in runs)
        # the UI's Jobs page lists a job's runs by their origin's repository label (issue 17)
        listed = instance.get_runs(filters=dg.RunsFilter(
            job_name="ingest_through_raw", tags={".dagster/repository": "__repository__@robolake"}))
        assert sorted(r.run_id for r in listed) == sorted(r.run_id for r in runs)
        assert {r.remote_job_origin.repository_origin.code_location_origin.location_name
                for r in runs} == {"robolake"}
    # nothing new: no partition to run
    assert main(argv) == 0
    assert "0 partition(s) to ingest" in capsys.readouterr().out
    assert main(["ingest", "--through", "bogus"]) == 2  # argparse names the choices


@pytest.mark.parametrize("bad", ["not-a-uri://x"])
def test_cli_rejects_unsupported_storage(bad, tmp_path, monkeypatch, capsys):
    from robolake_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["ingest", "--landing", bad, "--lake", str(tmp_path / "lake")]) == 2
    assert "unsupported storage URI 'not-a-uri://x'" in capsys.readouterr().err


def test_s3_lake_through_the_dagster_aws_s3_resource(shared_data: Path, s3_endpoint, monkeypatch):
    """The code location's resources reach an S3 landing zone and lake through dagster-aws's
    S3Resource (its boto3 client and retry configuration), credentials from the environment."""
    import boto3

    from robolake.settings import Settings
    from robolake_resources.lake import storage_resources

    for k, v in s3_endpoint.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ROBOLAKE_LANDING", "s3://dg-landing/incoming")
    monkeypatch.setenv("ROBOLAKE_LAKE", "s3://dg-lake/robolake")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"], region_name="us-east-1")
    for bucket in ("dg-landing", "dg-lake"):
        s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(shared_data / "husky_ros2_converted.mcap"), "dg-landing",
                   "incoming/husky.mcap", ExtraArgs={"Metadata": {
                       "robot-id": "husky-01", "robot-type": "husky", "region": "us-east"}})
    resources = storage_resources(Settings.from_env())
    assert resources["lake"].s3_endpoint_url == dg.EnvVar("AWS_ENDPOINT_URL")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("robot_type", ["husky"])
        result = dg.materialize([raw_uploads], instance=instance, resources=resources,
                                partition_key=partition_key("2015-05-21", "husky"))
    assert result.success
    [mat] = result.asset_materializations_for_node("raw_uploads")
    assert mat.metadata["uploads_flagged"].value == 1  # no CRCs: usable, flagged
    assert mat.metadata["dagster/uri"].value == "s3://dg-lake/robolake/raw/uploads"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dg-lake", Prefix="robolake/raw/files/")
            ["Contents"]]
    assert len(keys) == 1 and keys[0].endswith(".mcap")
    # the store's client is the resource's: Dagster's retry configuration (5 retries)
    with dg.build_resources({"lake": resources["lake"]}) as built:
        store = built.lake.store()
    assert store.client.meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
