"""Lake housekeeping: find the Delta tables, compact small files (Z-order the cleaned
tables, see robolake.zorder), vacuum safely; log failed runs.

Plain functions on a `Store` (folder or S3); no Dagster here, so the CLI, a
notebook or a cron job can run the same maintenance.

Vacuum and writes in flight: A full VACUUM deletes every data file that the latest
table version does not reference and that is older than the retention. A
writer first uploads its Parquet files and only then commits them, so while a
write is in flight its files are unreferenced; so are the files a compaction
just replaced, which readers of an older version may still be reading. The
retention therefore has to exceed the longest a write (or read) can take.
Robolake bounds every run's duration (`MAX_RUN_HOURS`: the instance's
`run_monitoring.max_runtime_seconds` terminates longer runs) and refuses any
retention shorter than twice that, and never less than Delta's own 7-day
default (`MIN_RETENTION_HOURS`); deltalake's `enforce_retention_duration`
stays on, so a table's own `delta.deletedFileRetentionDuration` can only
lengthen it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError

from robolake.storage import LocalStore, Store
from robolake.tables import open_table, replace_rows
from robolake.zorder import ZOrderChangedDataError, zorder_columns, zorder_table

DELTA_LOG = "_delta_log"
MAX_RUN_HOURS = 12  # no run lives longer (run_monitoring.max_runtime_seconds in dagster.yaml)
MIN_RETENTION_HOURS = 168  # Delta's default deletedFileRetentionDuration (7 days)
DEFAULT_RETENTION_HOURS = MIN_RETENTION_HOURS
TARGET_FILE_BYTES = 128 * 1024 * 1024
# Payload folders hold recordings, not tables: never walked for _delta_log.
PAYLOAD_PREFIXES = ("raw/files", "raw/quarantine")


class RetentionTooShortError(ValueError):
    pass


def safe_retention_hours(requested: int | None = None,
                         max_run_hours: int = MAX_RUN_HOURS) -> int:
    """The vacuum retention to use; refuses one that could delete files of a write in flight."""
    floor = max(MIN_RETENTION_HOURS, 2 * max_run_hours)
    hours = DEFAULT_RETENTION_HOURS if requested is None else int(requested)
    if hours < floor:
        raise RetentionTooShortError(
            f"vacuum retention {hours} h is shorter than {floor} h: a write still in flight "
            f"(runs may last up to {max_run_hours} h) or a reader of an older version could "
            f"lose its files; use at least {floor} h")
    return hours


# --------------------------------------------------------------------------- discovery


def _local_tables(root: str, start: str) -> Iterator[str]:
    base = os.path.join(root, start) if start else root
    for dirpath, dirnames, _files in os.walk(base):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        if DELTA_LOG in dirnames:
            yield rel
            dirnames[:] = []  # a table's partition folders hold no further tables
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and f"{rel}/{d}".strip("/") not in PAYLOAD_PREFIXES)


def _s3_tables(lake, start: str) -> Iterator[str]:
    paginator = lake.client.get_paginator("list_objects_v2")
    pending = [start.strip("/")]
    while pending:
        rel = pending.pop()
        full = "/".join(p for p in (lake.prefix, rel) if p)
        full = full + "/" if full else ""
        children = []
        for page in paginator.paginate(Bucket=lake.bucket, Prefix=full, Delimiter="/"):
            children += [c["Prefix"][len(full):].strip("/") for c in page.get("CommonPrefixes", [])]
        if DELTA_LOG in children:
            yield rel
            continue
        pending += sorted((f"{rel}/{c}".strip("/") for c in children
                           if not c.startswith(".")
                           and f"{rel}/{c}".strip("/") not in PAYLOAD_PREFIXES), reverse=True)


def discover_tables(lake: Store, prefix: str = "") -> list[str]:
    """Keys (relative to the lake root) of every Delta table: folders holding a `_delta_log`."""
    if isinstance(lake, LocalStore):
        found = _local_tables(str(lake.root), prefix)
    elif hasattr(lake, "client") and hasattr(lake, "bucket"):
        found = _s3_tables(lake, prefix)
    else:  # any other store: derive from the listing
        found = iter({info.key.split(f"/{DELTA_LOG}/")[0] for info in lake.list(prefix)
                      if f"/{DELTA_LOG}/" in info.key})
    return sorted(found)


# --------------------------------------------------------------------------- compact + vacuum


@dataclass
class TableMaintenance:
    table: str
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    files_added: int = 0  # by compaction
    files_removed: int = 0  # by compaction (still on storage until a later vacuum)
    files_vacuumed: int = 0
    partitions_zordered: int = 0  # cleaned tables: clustered by (robot_id, ts_ns) instead
    audited_versions: list[int] = field(default_factory=list)  # by the commit itself
    vacuum_candidates: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def maintain_table(lake: Store, key: str, retention_hours: int | None = None,
                   target_size: int = TARGET_FILE_BYTES, dry_run: bool = False,
                   now: Callable[[], float] = time.time) -> TableMaintenance:
    """Compact one table's small files, checkpoint its log, and vacuum expired files.

    A commit conflict (a concurrent writer replaced the same files) is reported
    in `error`, not raised: the table stays as it was and the next night retries.
    """
    hours = safe_retention_hours(retention_hours)
    table = open_table(lake, key)
    if table is None:
        raise FileNotFoundError(f"{key}: no Delta table at {lake.table_uri(key)}")
    before_version, before_files = table.version(), len(table.file_uris())
    result = TableMaintenance(key, before_version, before_version, before_files, before_files)
    try:
        if not dry_run:
            _rewrite(lake, key, table, target_size, result)
            table = DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
            if table.version() != before_version:
                table.create_checkpoint()
        # full: also files no version ever referenced (a killed writer's Parquet), which
        # is exactly where the retention must outlast any write still in flight
        result.vacuum_candidates = table.vacuum(retention_hours=hours, dry_run=dry_run,
                                                enforce_retention_duration=True, full=True)
        result.files_vacuumed = 0 if dry_run else len(result.vacuum_candidates)
        table = DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    except (CommitFailedError, DeltaError, ZOrderChangedDataError) as exc:
        result.error = f"{key}: {type(exc).__name__}: {exc}"
    result.version_after, result.files_after = table.version(), len(table.file_uris())
    _audit_versions(lake, key, result.version_before, result.version_after,
                    set(result.audited_versions))
    return result


def _rewrite(lake: Store, key: str, table: DeltaTable, target_size: int,
             result: TableMaintenance) -> None:
    """Cluster a cleaned table's partitions by (robot_id, ts_ns) where new files arrived
    (robolake.zorder: also compacts them), else compact the table's small files."""
    columns = zorder_columns(lake, key, table)
    if columns:
        done = zorder_table(lake, key, target_size, columns)
        result.files_added, result.files_removed = done.files_added, done.files_removed
        result.partitions_zordered = len(done.partitions)
        result.audited_versions = done.audited
        return
    metrics = table.optimize.compact(target_size=target_size)
    result.files_added = int(metrics.get("numFilesAdded", 0))
    result.files_removed = int(metrics.get("numFilesRemoved", 0))


def _audit_versions(lake: Store, key: str, before: int, after: int,
                    skip: Collection[int] = ()) -> None:
    """Compaction and vacuum commit through deltalake directly: audit their commits here
    (the audit log's own maintenance is not audited again, nor are `skip`: commits made
    through robolake.tables, which audits them itself)."""
    from robolake.governance import audit

    if key == audit.AUDIT or not audit.enabled():
        return
    for version in range(before + 1, after + 1):
        if version not in skip:
            audit.record_commit(lake, key, version)


def maintain_lake(lake: Store, retention_hours: int | None = None,
                  tables: list[str] | None = None, dry_run: bool = False,
                  log: Callable[[str], None] = lambda _msg: None) -> list[TableMaintenance]:
    """Compact and vacuum every table under the lake root (or the given ones)."""
    hours = safe_retention_hours(retention_hours)  # refuse before touching anything
    results = []
    for key in tables if tables is not None else discover_tables(lake):
        r = maintain_table(lake, key, hours, dry_run=dry_run)
        log(f"{key}: files {r.files_before} -> {r.files_after} (compacted {r.files_removed} "
            f"into {r.files_added}; clustered {r.partitions_zordered} partitions), vacuumed "
            f"{r.files_vacuumed}, version {r.version_before} "
            f"-> {r.version_after}" + (f"; FAILED {r.error}" if r.error else ""))
        results.append(r)
    return results


# --------------------------------------------------------------------------- failed runs

FAILED_RUNS = "ops/failed_runs"
FAILED_RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()),
    ("job_name", pa.string()),
    ("status", pa.string()),
    ("failed_ns", pa.int64()),
    ("reason", pa.string()),  # the run failure message
    ("failed_steps", pa.list_(pa.struct([("step_key", pa.string()), ("error", pa.string())]))),
    ("partition_key", pa.string()),
    ("queue", pa.string()),
    ("trigger", pa.string()),  # sensor / schedule / backfill that launched it, if any
    ("tags", pa.map_(pa.string(), pa.string())),
    ("recorded_ns", pa.int64()),
])

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DAGSTER_PG_PASSWORD",
               "PGPASSWORD", "MLFLOW_TRACKING_PASSWORD")
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://[^:/@\s]+:)[^@\s]+@", re.I)
MAX_REASON_CHARS = 4000


def redact(text: str | None) -> str:
    """Remove secrets (credential env values, passwords in URLs) from a message."""
    out = text or ""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    out = _URL_PASSWORD.sub(lambda m: m.group("scheme") + "***@", out)
    return out[:MAX_REASON_CHARS]


def record_failed_run(lake: Store, row: dict) -> int:
    """Write one failed run's row into `ops/failed_runs`, replacing any earlier row for it.

    Keyed by `run_id`, so a sensor evaluated twice for one failure keeps one row.
    Returns the table version.
    """
    full = {name: row.get(name) for name in FAILED_RUNS_SCHEMA.names}
    full["reason"] = redact(full["reason"])
    full["failed_steps"] = [{"step_key": s["step_key"], "error": redact(s.get("error"))}
                            for s in (full["failed_steps"] or [])]
    full["tags"] = sorted((full["tags"] or {}).items())
    full["recorded_ns"] = full["recorded_ns"] or time.time_ns()
    data = pa.Table.from_pylist([full], schema=FAILED_RUNS_SCHEMA)
    return replace_rows(lake, FAILED_RUNS, data, "run_id", [full["run_id"]])
