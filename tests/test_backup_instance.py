"""Restore drill of the instance database against a real PostgreSQL 15.

A Dagster instance on PostgreSQL gets runs (succeeded and failed), partitioned
materializations and dynamic partitions; the scheduled backup job dumps it into
the lake; the database is dropped; `robolake backup restore` brings it back into
a new database, and a fresh instance on that database shows the same runs, asset
history and partitions, and takes new runs. `robolake backup verify` passes on
the real backup and names the file and field of a corrupt or incomplete one.
"""

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from robolake import backup
from robolake.storage import open_store
from robolake_assets import cli
from robolake_assets.backups import SCHEDULED_TAG, instance_backup
from tests.test_postgres_instance import postgres  # noqa: F401 (the session's cluster)

REPO = Path(__file__).resolve().parents[1]
DAYS = dg.DailyPartitionsDefinition(start_date="2026-11-01")
ROBOTS = dg.DynamicPartitionsDefinition(name="drill_robot_type")
PARTS = dg.MultiPartitionsDefinition({"date": DAYS, "robot_type": ROBOTS})


@dg.asset(partitions_def=PARTS)
def drill_readings(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"rows": len(context.partition_key)})


@dg.asset(partitions_def=PARTS, deps=[drill_readings])
def drill_summary(context: dg.AssetExecutionContext) -> None:
    if context.partition_key.keys_by_dimension["robot_type"] == "spot":
        raise RuntimeError("the spot summary fails: a failed run must survive the restore too")


def state_of(instance: dg.DagsterInstance) -> dict:
    """What a person sees in the UI: runs, asset history, partitions."""
    runs = {r.run_id: (r.status.value, r.job_name, r.tags.get("robolake/team"))
            for r in instance.get_runs()}
    history = {}
    for name in ("drill_readings", "drill_summary"):
        records = instance.fetch_materializations(dg.AssetKey(name), limit=100).records
        history[name] = sorted((r.run_id, r.partition_key, r.storage_id) for r in records)
    return {"runs": runs, "history": history,
            "materialized": sorted(instance.get_materialized_partitions(
                dg.AssetKey("drill_readings"))),
            "robots": instance.get_dynamic_partitions(ROBOTS.name)}


def robolake(*argv: str, capsys) -> tuple[int, str]:
    """Exit code, stdout then stderr."""
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture
def drill_env(postgres, tmp_path, monkeypatch):  # noqa: F811
    admin = backup.PgTarget.from_env(postgres)
    backup.create_database(admin, "drill")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    env = {**postgres, "DAGSTER_PG_DB": "drill", "DAGSTER_HOME": str(home),
           "ROBOLAKE_LAKE": str(tmp_path / "lake"), "ROBOLAKE_LANDING": str(tmp_path / "in")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield admin, tmp_path / "lake"
    for db in ("drill", "drill_restored"):
        backup.drop_database(admin, db)


def fill_instance(instance: dg.DagsterInstance) -> None:
    instance.add_dynamic_partitions(ROBOTS.name, ["husky", "spot"])
    for robot in ("husky", "spot"):
        key = dg.MultiPartitionKey({"date": "2026-11-02", "robot_type": robot})
        result = dg.materialize([drill_readings, drill_summary], instance=instance,
                                partition_key=key, tags={"robolake/team": f"team-{robot}"},
                                raise_on_error=False)
        assert result.success == (robot == "husky")


def test_backup_drop_restore_shows_the_same_instance(drill_env, monkeypatch, capsys):
    admin, lake_dir = drill_env
    from robolake_resources.lake import storage_resources

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        fill_instance(instance)
        before = state_of(instance)
        tick = {SCHEDULED_TAG: "2026-12-03T10:15:00+00:00"}
        backup_runs, created = [], []
        for _ in range(2):  # a re-executed tick writes nothing twice
            run = instance_backup.execute_in_process(instance=instance, tags=tick,
                                                     resources=storage_resources())
            assert run.success
            backup_runs.append(run.run_id)
            assert run.output_for_node("backup_instance_database") == "20261203T101500Z"
            [output] = [e for e in run.all_node_events if e.is_successful_output]
            created.append(output.step_output_data.metadata["created"].value)
        assert created == [True, False]
    assert [e.stamp for e in backup.list_backups(open_store(lake_dir))] == [
        "20261203T101500Z"]
    pin = json.loads((lake_dir / "ops/backups/delta/20261203T101500Z.json").read_text())
    assert pin["tables"] == {}  # this lake has no Delta tables yet
    assert len(before["runs"]) == 2 and sorted(s for s, _, _ in before["runs"].values()) == [
        "FAILURE", "SUCCESS"]
    assert len(before["history"]["drill_readings"]) == 2
    assert len(before["history"]["drill_summary"]) == 1
    assert before["robots"] == ["husky", "spot"]

    # disaster: the instance database is gone
    backup.drop_database(admin, "drill")
    with admin.with_db("postgres").connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = 'drill'")
        assert cur.fetchone() == (0,)

    rc, out = robolake("backup", "restore", "--to-db", "drill_restored", capsys=capsys)
    assert rc == 0, out
    assert "restored 20261203T101500Z into database drill_restored" in out
    monkeypatch.setenv("DAGSTER_PG_DB", "drill_restored")
    with dg.DagsterInstance.get() as instance:
        after = state_of(instance)
        # the first backup run was in flight inside the dump's snapshot; the second, later
        assert after["runs"].pop(backup_runs[0])[0] == "STARTED"
        assert backup_runs[1] not in after["runs"]
        assert after == before
        # the restored instance takes new runs
        key = dg.MultiPartitionKey({"date": "2026-11-03", "robot_type": "husky"})
        assert dg.materialize([drill_readings], instance=instance, partition_key=key).success
        assert len(state_of(instance)["materialized"]) == 3

    # restoring over an existing database is refused
    rc, out = robolake("backup", "restore", "--to-db", "drill_restored", capsys=capsys)
    assert rc == 2 and "database 'drill_restored' exists" in out


def test_verify_passes_a_real_backup_and_names_what_is_broken(drill_env, capsys):
    admin, lake_dir = drill_env
    with dg.DagsterInstance.get() as instance:  # Dagster creates its schema
        instance.add_dynamic_partitions(ROBOTS.name, ["husky"])
    lake = open_store(lake_dir)
    rc, out = robolake("backup", "instance", "--stamp", "20261101T090000Z", capsys=capsys)
    assert rc == 0, out
    assert "backup 20261101T090000Z: " in out and "(written); 0 Delta table" in out
    good = backup.backup_instance(lake, admin.with_db("drill"), stamp="20261101T090000Z")
    assert not good.created and good.tables["public.dynamic_partitions"] == 1
    assert set(backup.DAGSTER_TABLES) <= set(good.tables)
    rc, out = robolake("backup", "verify", "--json", "--max-age-hours", "1e9", capsys=capsys)
    assert rc == 0, out
    [verdict] = json.loads(out)
    assert verdict["ok"] and verdict["restore_seconds"] > 0

    # a corrupt copy (truncated dump) and, newer, a dump whose manifest never came
    for stamp in ("20261101T100000Z", "20261101T110000Z"):
        shutil.copytree(lake_dir / backup.BACKUP_PREFIX / good.stamp,
                        lake_dir / backup.BACKUP_PREFIX / stamp)
    bad_dump = lake_dir / backup.BACKUP_PREFIX / "20261101T100000Z" / backup.DUMP_NAME
    bad_dump.write_bytes(bad_dump.read_bytes()[:-100])
    os.remove(lake_dir / backup.BACKUP_PREFIX / "20261101T110000Z" / backup.MANIFEST_NAME)
    rc, out = robolake("backup", "verify", "--count", "3", "--max-age-hours", "1e9",
                       capsys=capsys)
    assert rc == 1, out
    assert "20261101T090000Z\tOK (restored in" in out
    assert (f"ops/backups/instance/20261101T100000Z/dagster.dump: size_bytes "
            f"{good.size_bytes - 100} != manifest {good.size_bytes}") in out
    assert "20261101T110000Z/manifest.json: no manifest (backup incomplete" in out
    # the newest complete backup is too old for the default objective (2 h)
    rc, out = robolake("backup", "verify", "--no-restore", capsys=capsys)
    assert rc == 1 and "the recovery point objective is breached" in out


def _entry(stamp: str, complete: bool = True) -> backup.BackupEntry:
    return backup.BackupEntry(stamp, complete, 1, (f"{stamp}/x",))


def test_retention_keeps_the_newest_and_one_a_day():
    hourly = [_entry(f"202612{d:02d}T{h:02d}1500Z") for d in (1, 2, 3) for h in range(0, 24, 6)]
    stale = _entry("20261202T030000Z", complete=False)  # older than the newest complete one
    running = _entry("20261203T230000Z", complete=False)  # may still be being written
    dropped = {e.stamp for e in backup.backups_to_delete([*hourly, stale, running],
                                                         keep_last=3, keep_daily=2)}
    # kept: the newest 3 (Dec 3 06,12,18), the newest of Dec 3 and Dec 2; running is kept
    assert dropped == {e.stamp for e in hourly} - {
        "20261203T061500Z", "20261203T121500Z", "20261203T181500Z",
        "20261202T181500Z"} | {stale.stamp}
    with pytest.raises(ValueError, match="keep_last=0"):
        backup.backups_to_delete(hourly, keep_last=0)


def test_apply_retention_deletes_manifest_and_dump(tmp_path):
    lake = open_store(tmp_path)
    for stamp in ("20261201T000000Z", "20261202T000000Z", "20261203T000000Z"):
        dump_key, manifest_key = backup.backup_keys(stamp)
        lake.write_bytes(dump_key, b"dump")
        lake.write_bytes(manifest_key, b"{}")
    assert backup.apply_retention(lake, keep_last=1, keep_daily=2) == ["20261201T000000Z"]
    assert [(e.stamp, e.complete) for e in backup.list_backups(lake)] == [
        ("20261202T000000Z", True), ("20261203T000000Z", True)]
    assert not (tmp_path / backup.BACKUP_PREFIX / "20261201T000000Z" / "dagster.dump").exists()
