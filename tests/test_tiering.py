"""Tiering a local lake by configs/retention.yaml: files past their layer's tier age move to
the cold folder, expired ones are deleted, Delta tables and live dataset/model versions stay,
every move is audited, and re-runs do nothing (robolake.governance.tiering)."""

from __future__ import annotations

import os
import time

from robolake.datasets.build import REGISTRY, REGISTRY_SCHEMA
from robolake.governance import audit, tiering
from robolake.governance.erase import WITHDRAWN, WITHDRAWN_SCHEMA
from robolake.governance.retention import storage_report
from robolake.storage import open_store
from robolake.tables import append_rows, open_table, read_table
from robolake_assets.cli import main

DAY_NS = tiering.DAY_NS
NOW = time.time_ns()
FILES = {  # key: (age in days, bytes)
    "raw/files/old.mcap": (40, 100),  # raw: cold after 30 days
    "raw/files/new.mcap": (10, 200),
    "raw/quarantine/ancient.mcap": (800, 50),  # raw: deleted after 730 days
    "datasets/ds/v1/shard-0.tar": (400, 70),  # registered and live: pinned
    "datasets/ds/v0/shard-0.tar": (200, 30),  # never registered: cold after 180 days
    "datasets/ds/v2/shard-0.tar": (200, 40),  # withdrawn: cold after 180 days
    "models/m/versions/3/model.onnx": (400, 60),  # a model version: pinned
    "models/m/checkpoints/run1/last.pt": (200, 40),  # cold after 180 days
}


def _age(path, days: float) -> None:
    stamp = NOW - int(days * DAY_NS)
    os.utime(path, ns=(stamp, stamp))


def _lake(tmp_path):
    lake = open_store(tmp_path / "lake")
    for key, (days, size) in FILES.items():
        lake.write_bytes(key, key.encode().ljust(size, b"."))
        _age(lake.root / key, days)
    registry = [{"name": "ds", "version": v} for v in ("v1", "v2")]
    append_rows(lake, REGISTRY, registry, REGISTRY_SCHEMA)
    append_rows(lake, WITHDRAWN, [{"name": "ds", "version": "v2", "reason": "erase"}],
                WITHDRAWN_SCHEMA)
    append_rows(lake, "raw/uploads", [{"name": "u", "version": "1"}], REGISTRY_SCHEMA)
    for path in (lake.root / "raw/uploads").rglob("*"):  # a Delta table's files: never moved
        if path.is_file():
            _age(path, 1000)
    return lake


def test_local_tiering_moves_expires_pins_audits_and_reruns_idempotently(tmp_path, capsys):
    lake = _lake(tmp_path)
    cold = lake.root / ".cold"
    plan = tiering.plan_tiering(lake, now_ns=NOW)
    assert sorted((a.key, a.action, a.tier) for a in plan.actions) == [
        ("datasets/ds/v0/shard-0.tar", "cold", "hot"),
        ("datasets/ds/v2/shard-0.tar", "cold", "hot"),
        ("models/m/checkpoints/run1/last.pt", "cold", "hot"),
        ("raw/files/old.mcap", "cold", "hot"),
        ("raw/quarantine/ancient.mcap", "expire", "hot")]
    assert plan.pinned == 2 and plan.in_tables >= 2  # parquet + log of raw/uploads at least

    assert main(["storage", "tier", "--lake", str(lake.root)]) == 0  # dry run by default
    out = capsys.readouterr().out
    assert "move to cold     raw/files/old.mcap  (100 B, 40 days old)" in out
    assert "dry run: nothing changed" in out and not cold.exists()
    before = storage_report(lake)
    assert before[("raw", "hot")][1] > 350 and ("raw", "cold") not in before

    assert main(["storage", "tier", "--lake", str(lake.root), "--apply"]) == 0
    assert "done raw:cold: 1 file(s) (audited)" in capsys.readouterr().out
    moved = cold / "raw/files/old.mcap"
    assert moved.read_bytes().startswith(b"raw/files/old.mcap") and moved.stat().st_size == 100
    assert abs(moved.stat().st_mtime_ns - (NOW - 40 * DAY_NS)) < 10**6  # age kept
    assert not (lake.root / "raw/files/old.mcap").exists()
    assert not (lake.root / "raw/quarantine/ancient.mcap").exists()
    for key in ("raw/files/new.mcap", "datasets/ds/v1/shard-0.tar",
                "models/m/versions/3/model.onnx"):
        assert (lake.root / key).exists(), key
    assert read_table(lake, "raw/uploads").num_rows == 1  # the table still reads

    report = storage_report(lake)
    assert report[("raw", "cold")] == (1, 100)
    assert report[("datasets", "cold")] == (2, 70)
    assert report[("models", "cold")] == (1, 40)
    assert report[("raw", "hot")][1] == before[("raw", "hot")][1] - 150
    assert main(["storage", "report", "--lake", str(lake.root)]) == 0
    assert "raw          cold                   1            100" in capsys.readouterr().out

    entries = read_table(lake, audit.AUDIT).to_pylist()
    tiered = {(e["target"], e["action"]): e for e in entries if "tier-" in e["details"]}
    assert tiered[("raw", "write")]["files"] == ["hot:raw/files/old.mcap"]
    assert tiered[("raw", "purge")]["files"] == ["hot:raw/quarantine/ancient.mcap"]
    assert sorted(tiered[("datasets", "write")]["files"]) == [
        "hot:datasets/ds/v0/shard-0.tar", "hot:datasets/ds/v2/shard-0.tar"]
    assert audit.verify(lake).ok

    version = open_table(lake, audit.AUDIT).version()
    assert tiering.plan_tiering(lake, now_ns=NOW).actions == []  # re-run: nothing to do
    assert main(["storage", "tier", "--lake", str(lake.root), "--apply"]) == 0
    assert open_table(lake, audit.AUDIT).version() == version  # nothing moved, nothing audited
    assert storage_report(lake) == report

    later = tiering.plan_tiering(lake, now_ns=NOW + 700 * DAY_NS)  # old.mcap is 740 days old
    assert ("raw/files/old.mcap", "expire", "cold") in [(a.key, a.action, a.tier)
                                                        for a in later.actions]
    assert "datasets/ds/v1/shard-0.tar" not in [a.key for a in later.actions]  # pinned

    assert tiering.restore(lake, "raw/files/old.mcap")
    assert (lake.root / "raw/files/old.mcap").stat().st_size == 100 and not moved.exists()
    assert not tiering.restore(lake, "raw/files/old.mcap")


def test_erase_deletes_a_tiered_raw_copy(tmp_path):
    from robolake.governance.erase import erase_robot
    from robolake.raw import RAW_UPLOADS, UPLOADS_PARTITION_BY, UPLOADS_SCHEMA

    lake = open_store(tmp_path / "lake")
    for robot in ("r1", "r2"):
        key = f"raw/files/2026-01-01/{robot}.mcap"
        lake.write_bytes(key, f"payload of {robot}".encode())
        _age(lake.root / key, 40)
        append_rows(lake, RAW_UPLOADS, [{"upload_id": f"u-{robot}", "robot_id": robot,
                                         "robot_type": "amr", "date": "2026-01-01",
                                         "status": "accepted", "raw_key": key}],
                    UPLOADS_SCHEMA, UPLOADS_PARTITION_BY)
    tiering.apply_tiering(lake, tiering.plan_tiering(lake, now_ns=NOW))
    cold = lake.root / ".cold/raw/files/2026-01-01"
    assert sorted(p.name for p in cold.iterdir()) == ["r1.mcap", "r2.mcap"]
    receipt = erase_robot(lake, "r1", "test: a data subject's request")
    assert ".cold/raw/files/2026-01-01/r1.mcap" in receipt.files_deleted
    assert sorted(p.name for p in cold.iterdir()) == ["r2.mcap"]  # the other robot's stays
    assert read_table(lake, RAW_UPLOADS).column("robot_id").to_pylist() == ["r2"]


def test_the_nightly_job_tiers_a_local_lake_and_leaves_an_s3_lake_to_its_lifecycle(tmp_path):
    import dagster as dg

    from robolake_assets.maintenance import storage_tiering
    from robolake_resources.lake import LakeResource

    lake = _lake(tmp_path)

    def run(root: str, **config):
        with dg.instance_for_test() as instance:
            result = storage_tiering.execute_in_process(
                instance=instance, resources={"lake": LakeResource(root=root)},
                run_config={"ops": {"tier_local_lake": {"config": config}}})
        assert result.success
        [materialized] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {k: v.value for k, v in
                    materialized.event_specific_data.metadata.items()}
        return result.output_for_node("tier_local_lake"), metadata

    done, meta = run(str(lake.root), dry_run=True)
    assert done == 0 and (lake.root / "raw/files/old.mcap").exists()
    assert (meta["files_to_cold"], meta["files_expired"], meta["bytes"]) == (4, 1, 260)
    assert meta["pinned_by_live_versions"] == 2 and meta["left_in_delta_tables"] >= 2
    assert "raw/quarantine/ancient.mcap" in meta["plan"]

    done, meta = run(str(lake.root))
    assert done == 5 and meta["done"] == {"datasets:cold": 2, "models:cold": 1,
                                          "raw:cold": 1, "raw:expire": 1}
    assert (lake.root / ".cold/raw/files/old.mcap").exists()
    assert not (lake.root / "raw/quarantine/ancient.mcap").exists()
    done, meta = run(str(lake.root))  # the next night: nothing left to do
    assert done == 0 and meta["plan"] == "nothing to tier"

    done, meta = run("s3://robolake-lake/prefix")  # its bucket's lifecycle rules tier it
    assert done == 0 and meta["skipped"] == "S3 lifecycle rules"
