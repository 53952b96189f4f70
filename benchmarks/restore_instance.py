"""Restore time per GB of the Dagster instance database (the figure docs/disaster-recovery.md
uses for the instance database's recovery time).

A throwaway PostgreSQL 15 cluster (the tests' `pg_cluster`) gets a real Dagster
schema (deploy/dagster-postgres.yaml, migrated by Dagster itself), then
synthetic event-log rows shaped like real ones (a serialized event of ~0.6 KB with
320 hex characters that differ per row, so the dump compresses about as poorly as
real event JSON; run id, step key, asset key, partition, timestamp) until the database reaches
`--gb`; `robolake.backup` dumps it into a lake folder and restores it into a new
database (`pg_restore --jobs`), exactly as `robolake backup restore` does.
Baseline: copying the dump file (the floor for moving the bytes on this disk).

Usage: python benchmarks/restore_instance.py [--gb 1.0] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robolake import backup  # noqa: E402
from robolake.storage import open_store  # noqa: E402
from tests.test_postgres_instance import pg_cluster  # noqa: E402

EVENT = json.dumps({"__class__": "EventLogEntry", "level": 10, "step_key": "raw_uploads",
                    "dagster_event": {"event_type_value": "ASSET_MATERIALIZATION",
                                      "event_specific_data": {"metadata": {
                                          "rows": {"value": 12345}, "run_key": "PADDING"}}}})
INSERT = """INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key,
    asset_key, partition)
SELECT md5((g / 50)::text), replace(%s, 'PADDING', (SELECT string_agg(md5((g * 31 + i)::text),
    '') FROM generate_series(1, 10) AS i)), 'ASSET_MATERIALIZATION',
    now() - (g || ' seconds')::interval, 'raw_uploads',
    '["raw_uploads"]', '2026-11-' || lpad(((g %% 28) + 1)::text, 2, '0') || '|husky'
FROM generate_series(%s, %s) AS g"""


def dagster_schema(env: dict[str, str], home: Path) -> None:
    """Let Dagster create and migrate its own tables in the database."""
    import dagster as dg

    shutil.copyfile(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    os.environ.update({**env, "DAGSTER_HOME": str(home)})
    with dg.DagsterInstance.get() as instance:
        instance.get_runs(limit=1)


def fill(target: backup.PgTarget, gb: float) -> float:
    """Insert event rows in batches until the database is `gb` GiB; returns its size."""
    conn = target.connect()
    conn.autocommit = True
    batch, start = 200_000, 0
    with conn.cursor() as cur:
        while True:
            cur.execute("SELECT pg_database_size(current_database())")
            size = cur.fetchone()[0] / 1024**3
            if size >= gb:
                cur.execute("VACUUM ANALYZE event_logs")
                conn.close()
                return size
            cur.execute(INSERT, (EVENT, start, start + batch - 1))
            start += batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="database size to reach (GiB)")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore --jobs")
    args = parser.parse_args()
    with pg_cluster() as env, tempfile.TemporaryDirectory(prefix="robolake-bench-") as tmp:
        dagster_schema(env, Path(tmp))
        target = backup.PgTarget.from_env(env)
        db_gb = fill(target, args.gb)
        lake = open_store(Path(tmp) / "lake")
        record = backup.backup_instance(lake, target)
        dump = Path(tmp) / "lake" / record.key
        started = time.perf_counter()
        shutil.copyfile(dump, Path(tmp) / "copy.dump")
        copy_s = time.perf_counter() - started
        result = backup.restore_instance(lake, target.with_db("restored"), jobs=args.jobs)
        t0 = time.perf_counter()
        verdict = backup.verify_backup(lake, record.stamp)  # checksums + TOC, no restore
        verify_s = time.perf_counter() - t0
    rows = sum(record.tables.values())
    print(json.dumps({
        "database_gib": round(db_gb, 3), "rows": rows, "dump_mib": round(record.size_bytes /
                                                                          1024**2, 1),
        "dump_s": record.dump_seconds, "dump_s_per_gib": round(record.dump_seconds / db_gb, 1),
        "restore_s": result.seconds, "restore_s_per_gib": round(result.seconds / db_gb, 1),
        "restore_jobs": args.jobs, "verify_no_restore_s": round(verify_s, 2),
        "verify_ok": verdict.ok, "baseline_copy_dump_s": round(copy_s, 2),
        "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
