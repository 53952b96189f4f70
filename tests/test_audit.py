"""The audit log ops/audit: one unbroken hash chain from concurrent writer processes,
tampering found and named, every lake write and Dagster run write recorded."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from robolake.governance import audit
from robolake.storage import open_store
from robolake.tables import append_rows, read_table

WRITERS, EACH = 4, 6


def _append_many(root: str, writer: int, barrier) -> None:
    lake = open_store(root)
    barrier.wait()  # all start at once: their commits race for the same versions
    for i in range(EACH):
        with audit.acting_as(audit.Actor(f"writer-{writer}", "test")):
            audit.record(lake, "read", f"t/{writer}", details={"i": i})


def _entries(lake) -> list[dict]:
    return sorted(read_table(lake, audit.AUDIT).to_pylist(), key=lambda r: r["seq"])


def test_concurrent_processes_make_one_unbroken_chain(tmp_path: Path):
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, barrier))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lake = open_store(tmp_path)
    verdict = audit.verify(lake)
    assert verdict.ok, verdict.reason
    rows = _entries(lake)
    assert [r["seq"] for r in rows] == list(range(WRITERS * EACH))
    for w in range(WRITERS):  # every writer's entries, in its own order
        mine = [r for r in rows if r["actor"] == f"writer-{w}"]
        assert [r["details"] for r in mine] == [f'{{"i": {i}}}' for i in range(EACH)]
    assert all(r["prev_hash"] == p["hash"] for p, r in zip(rows, rows[1:], strict=False))


@pytest.fixture
def chained(tmp_path: Path):
    lake = open_store(tmp_path)
    for i in range(6):
        audit.record(lake, "read", f"cleaned/t{i}", partition=f"p{i}")
    assert audit.verify(lake).ok
    return lake


def test_an_edited_entry_is_found_and_named(chained):
    rows = _entries(chained)
    DeltaTable(chained.table_uri(audit.AUDIT)).update(
        predicate="seq = 3", updates={"actor": "'mallory'"})
    verdict = audit.verify(chained)
    assert not verdict.ok
    assert verdict.broken_seq == 3 and verdict.broken_entry == rows[3]["entry_id"]
    assert "do not match its hash" in verdict.reason


def test_a_removed_entry_is_found_and_named(chained):
    DeltaTable(chained.table_uri(audit.AUDIT)).delete("seq = 2")
    verdict = audit.verify(chained)
    assert (verdict.broken_seq, "missing" in verdict.reason) == (2, True)


def test_a_removed_tail_is_found(chained):
    DeltaTable(chained.table_uri(audit.AUDIT)).delete("seq = 5")
    verdict = audit.verify(chained)
    assert verdict.broken_seq == 5 and "removed" in verdict.reason


def test_cli_audit_verify(chained, capsys):
    from robolake_assets.cli import main

    assert main(["audit", "verify", "--lake", str(chained.root)]) == 0
    assert "audit chain intact: 6 entries" in capsys.readouterr().out
    DeltaTable(chained.table_uri(audit.AUDIT)).update(
        predicate="seq = 4", updates={"target": "'elsewhere'"})
    assert main(["audit", "verify", "--lake", str(chained.root)]) == 1
    assert "BROKEN at entry 4" in capsys.readouterr().out


SCHEMA = pa.schema([("robot_id", pa.string()), ("x", pa.int64())])


def test_every_lake_write_is_recorded_with_its_files_and_actor(tmp_path: Path):
    lake = open_store(tmp_path)
    with audit.acting_as(audit.Actor("key:abc", "engineer", origin="10.0.0.7")):
        version = append_rows(lake, "cleaned/demo", [{"robot_id": "r1", "x": 1}], SCHEMA)
    [entry] = _entries(lake)
    assert (entry["action"], entry["target"], entry["version"]) == ("write", "cleaned/demo",
                                                                    version)
    assert (entry["actor"], entry["role"], entry["origin"]) == ("key:abc", "engineer",
                                                                "10.0.0.7")
    [added] = entry["files"]
    assert added.startswith("+part-") and (tmp_path / "cleaned/demo" / added[1:]).is_file()


def test_a_dagster_run_is_the_actor_of_its_writes(tmp_path: Path):
    import dagster as dg

    from robolake_resources.lake import LakeResource

    # resources by key, not by annotation: this module is imported by the spawned writers
    # above, which should not pay for importing Dagster
    @dg.asset(required_resource_keys={"lake"})
    def demo_table(context) -> None:
        store = context.resources.lake.store()
        append_rows(store, "cleaned/demo", [{"robot_id": "r1", "x": 1}], SCHEMA)

    result = dg.materialize([demo_table], resources={"lake": LakeResource(root=str(tmp_path))})
    assert result.success
    [entry] = _entries(open_store(tmp_path))
    assert (entry["actor"], entry["role"]) == (f"run:{result.run_id}", "run")
    assert audit.current_actor().role == "cli"  # reset after the run


def test_every_gateway_call_is_audited_with_key_role_status_and_address(tmp_path: Path):
    import httpx
    from gateway_fixtures import make_settings, start_gateway

    gw = start_gateway(make_settings(tmp_path))
    try:
        robot = gw.key("robot")
        token = gw.token(robot)
        with gw.client(token) as c:
            assert c.get("/api/v1/auth/whoami").status_code == 200
            assert c.get("/api/v1/keys").status_code == 403  # a robot may not list keys
            assert c.get("/api/v1/health").status_code == 200  # probes are not audited
        assert httpx.get(f"{gw.url}/api/v1/auth/whoami").status_code == 401
    finally:
        gw.stop()  # the app's shutdown appends what is still pending
    lake = open_store(gw.settings.lake)
    assert audit.verify(lake).ok
    calls = [(r["action"], r["target"], r["outcome"], r["role"]) for r in _entries(lake)]
    assert calls == [("write", "POST /api/v1/auth/token", "200", "none"),
                     ("read", "GET /api/v1/auth/whoami", "200", "robot"),
                     ("read", "GET /api/v1/keys", "403", "robot"),
                     ("read", "GET /api/v1/auth/whoami", "401", "none")]
    whoami = _entries(lake)[1]
    key_id = robot.split("_")[1]
    assert whoami["actor"] == f"key:{key_id}" and whoami["origin"].startswith("127.0.0.1:")
