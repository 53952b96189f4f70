"""Spot interruption, Delta maintenance and the failed-runs sensor, on real recordings.

- A raw step killed mid-write (files copied, Parquet written, commit never made) and
  retried leaves exactly one row per upload.
- The nightly maintenance finds the lake's tables by their _delta_log, compacts them
  without changing their rows, and its vacuum cannot delete the files of a write in flight.
- The run-failure sensor records a failed run with its reason, once.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from robolake import maintenance, raw
from robolake.governance.audit import AUDIT
from robolake.governance.audit import verify as audit_verify
from robolake.storage import open_store
from robolake.tables import Snapshot, commit_keyed, open_table, read_table
from robolake_assets.maintenance import delta_maintenance
from robolake_resources.lake import LakeResource
from robolake_sensors.run_status import failed_runs_sensor
from tests.conftest import land

HUSKY = {"robot_id": "husky-01", "robot_type": "husky", "region": "us-east"}
SICK = {"robot_id": "sick-01", "robot_type": "lidar_rig", "region": "eu-west"}
DAY = "2015-05-21"


class SpotReclaimed(Exception):
    pass


def _kill_during_first_uploads_commit(monkeypatch, lake_dir: Path) -> list[Path]:
    """Make the first raw/uploads commit die after its Parquet file is written: what a
    Spot reclaim in the middle of `write_deltalake` leaves behind."""
    orphans: list[Path] = []

    def dying_commit(lake, key, plan, partition_by=None, **kwargs):
        if key == raw.RAW_UPLOADS and not orphans:
            write = plan(Snapshot(lake, key, open_table(lake, key)))
            first = write.data.to_pylist()[0]
            folder = lake_dir / key / f"date={first['date']}" / f"robot_type={first['robot_type']}"
            folder.mkdir(parents=True, exist_ok=True)
            orphan = folder / f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
            pq.write_table(write.data, orphan)
            orphans.append(orphan)
            raise SpotReclaimed("node reclaimed during the Delta commit")
        return commit_keyed(lake, key, plan, partition_by, **kwargs)

    monkeypatch.setattr(raw, "commit_keyed", dying_commit)
    return orphans


def test_step_killed_mid_write_and_retried_leaves_no_duplicates(shared_data, dirs, monkeypatch):
    landing_dir, lake_dir = dirs
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY)
    land(landing_dir, shared_data / "robot_localization_test1_husky.bag", HUSKY)
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    orphans = _kill_during_first_uploads_commit(monkeypatch, lake_dir)

    with pytest.raises(SpotReclaimed):
        raw.ingest_partition(landing, lake, DAY, "husky")
    assert len(orphans) == 1 and orphans[0].exists()
    copies = sorted(p.name for p in (lake_dir / "raw" / "files").rglob("*.*"))
    assert len(copies) == 2  # copied before the commit that died

    retry = raw.ingest_partition(landing, lake, DAY, "husky")  # the step's RetryPolicy
    assert (retry.counts["flagged"], retry.counts["duplicate"]) == (1, 1)  # bag = MCAP
    rows = read_table(lake, raw.RAW_UPLOADS).to_pylist()
    assert len(rows) == 2
    assert len({(r["upload_id"], r["landing_key"]) for r in rows}) == 2
    assert sorted(p.name for p in (lake_dir / "raw" / "files").rglob("*.*")) == copies
    # a second retry (the step was retried after all) adds nothing
    assert raw.ingest_partition(landing, lake, DAY, "husky").new_rows == []
    assert read_table(lake, raw.RAW_UPLOADS).num_rows == 2

    # the dead attempt's Parquet file is unreferenced; a vacuum with the safe retention keeps
    # it (it could be a write still in flight), and removes it once older than the retention
    results = maintenance.maintain_lake(lake, tables=[raw.RAW_UPLOADS])
    assert orphans[0].exists() and results[0].files_vacuumed == 0
    old = time.time() - (maintenance.DEFAULT_RETENTION_HOURS + 1) * 3600
    os.utime(orphans[0], (old, old))
    [result] = maintenance.maintain_lake(lake, tables=[raw.RAW_UPLOADS])
    assert result.files_vacuumed == 1 and not orphans[0].exists()
    assert read_table(lake, raw.RAW_UPLOADS).num_rows == 2


def test_nightly_maintenance_compacts_every_table_and_keeps_rows(shared_data, dirs):
    landing_dir, lake_dir = dirs
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    # three separate arrivals: three small files in raw/uploads, several in the landing index
    for src, identity, part in [
        ("husky_ros2_converted.mcap", HUSKY, (DAY, "husky")),
        ("robot_localization_test1_husky.bag", HUSKY, (DAY, "husky")),
        ("sick_rms1000_lms1000_movement_off.bag", SICK, ("2022-09-23", "lidar_rig")),
    ]:
        land(landing_dir, shared_data / src, identity)
        raw.ingest_partition(landing, lake, *part)
    before = {k: read_table(lake, k).sort_by("landing_key").to_pylist()
              for k in (raw.RAW_UPLOADS, raw.LANDING_INDEX)}
    files_before = len(open_table(lake, raw.LANDING_INDEX).file_uris())
    assert files_before >= 2

    # every write was audited (robolake.governance.audit): the audit log is a table too
    assert maintenance.discover_tables(lake) == [AUDIT, raw.LANDING_INDEX, raw.RAW_UPLOADS]
    with dg.instance_for_test() as instance:
        result = delta_maintenance.execute_in_process(
            instance=instance, resources={"lake": LakeResource(root=str(lake_dir))})
    assert result.success
    metadata = result.output_for_node("compact_and_vacuum_lake")
    assert metadata == 3  # tables maintained
    assert audit_verify(lake).ok  # compacting the audit log keeps its chain
    compactions = [e for e in read_table(lake, AUDIT).to_pylist()
                   if e["target"] == raw.LANDING_INDEX and '"OPTIMIZE"' in e["details"]]
    assert len(compactions) == 1 and any(f.startswith("-") for f in compactions[0]["files"])
    # compaction merged the landing index's files; uploads' partitions each had one per append
    assert len(open_table(lake, raw.LANDING_INDEX).file_uris()) == 1
    assert len(open_table(lake, raw.RAW_UPLOADS).file_uris()) == 2  # one per partition
    after = {k: read_table(lake, k).sort_by("landing_key").to_pylist() for k in before}
    assert after == before
    # the replaced files are still on storage for readers of older versions
    assert open_table(lake, raw.RAW_UPLOADS).vacuum(retention_hours=168, dry_run=True) == []


def test_vacuum_retention_can_never_be_shorter_than_a_write_in_flight(tmp_path):
    assert maintenance.safe_retention_hours() == 168
    assert maintenance.safe_retention_hours(240) == 240
    for hours in (0, 1, 23, 167):
        with pytest.raises(maintenance.RetentionTooShortError, match="in flight"):
            maintenance.safe_retention_hours(hours)
    with pytest.raises(maintenance.RetentionTooShortError):
        maintenance.safe_retention_hours(200, max_run_hours=120)
    with dg.instance_for_test() as instance:
        result = delta_maintenance.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"ops": {"compact_and_vacuum_lake": {"config": {"retention_hours": 1}}}},
            resources={"lake": LakeResource(root=str(tmp_path / "lake"))})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "shorter than 168 h" in failure.step_failure_data.error.message
    assert not (tmp_path / "lake").exists()  # refused before touching the lake


@dg.op
def copy_to_lake():
    # a failure whose message carries a credential, as a misconfigured URL would
    raise RuntimeError("cannot reach postgresql://dagster:hunter2secret@db:5432/dagster")


@dg.job(tags={"robolake/queue": "etl", "dagster/priority": "-20"})
def flaky_job():
    copy_to_lake()


def test_failed_run_is_recorded_with_its_reason_once(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "AKIAsecretvalue123")
    lake = LakeResource(root=str(tmp_path / "lake"))
    with dg.instance_for_test() as instance:
        result = flaky_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        failure = [e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE"][-1]
        for _ in range(2):  # a tick evaluated twice records the run once
            context = dg.build_run_status_sensor_context(
                sensor_name="failed_runs_sensor", dagster_event=failure,
                dagster_instance=instance, dagster_run=run,
                resources={"lake": lake}).for_run_failure()
            failed_runs_sensor(context)
    rows = read_table(lake.store(), maintenance.FAILED_RUNS).to_pylist()
    assert len(rows) == 1
    [row] = rows
    assert (row["run_id"], row["job_name"], row["status"]) == (result.run_id, "flaky_job",
                                                               "FAILURE")
    assert row["queue"] == "etl" and row["failed_ns"] > 0
    assert "copy_to_lake" in row["reason"]
    [step] = row["failed_steps"]
    assert step["step_key"] == "copy_to_lake"
    assert "cannot reach postgresql://dagster:***@db:5432/dagster" in step["error"]
    assert "hunter2secret" not in repr(rows) and "AKIAsecretvalue123" not in repr(rows)
