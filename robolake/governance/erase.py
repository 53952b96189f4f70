"""GDPR erase: every trace of one robot's recordings (optionally within dates) taken out of
the lake, with a receipt.

The window (`--from`, `--to`) is by row timestamp: rows with ts_ns in [from 00:00 UTC,
to + 1 day 00:00 UTC) are erased from every table with a ts_ns column, whichever day the
recording started. A recording that lies entirely inside the window is erased whole (its
index row, quality report, raw/quarantine copy and landing file too). A recording that
crosses the window's edge (e.g. one running past midnight of `--to`) is erased *partly*:
its rows inside the window go, its derived files (feature-cache entries, annotation media,
the shards of dataset versions built from it) go, but its raw copy, landing file,
raw/uploads row and quality report stay, because they also hold data outside the window;
the receipt lists it under `partial_uploads` with what was kept. Erase without dates (or
with a window that covers the whole recording) to remove those as well.

What an erase does, in an order that a re-run can finish after any interruption:

1. finds the robot's uploads in raw/uploads (the index is cleaned last, so a re-run still
   finds them);
2. deletes the robot's rows from every catalog table that holds rows per robot (features,
   cleaned, raw) and its uploads' rows from the landing index;
3. deletes the raw and quarantine copies, the landing files (and sidecars) when a landing
   zone is given, and the feature-cache entries (features/cache/<upload_id>/);
4. withdraws every dataset version built from those uploads (datasets/withdrawn, with the
   reason; its shards are deleted, its manifest kept for lineage; a rebuild is a new
   version) and tags the MLflow model versions trained on them;
5. with `purge_now`, vacuums the touched tables at once (retention 0: no earlier Delta
   version still holds the rows) and removes their log before a fresh checkpoint (old
   commits carry the removed files' column statistics, e.g. min/max robot_id);
6. writes the receipt to ops/erasures and an `erase` (and `purge`) entry to the audit log.

Receipts and audit entries name the robot by the sha256 of its id, never in clear.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import date

import polars as pl
import pyarrow as pa

from robolake.annotations import MEDIA_PREFIX, erase_robot_tasks
from robolake.governance import audit, catalog
from robolake.raw import SIDECAR_SUFFIX
from robolake.storage import Store
from robolake.tables import append_new_rows, open_table, read_table, sql_equals

WITHDRAWN = "datasets/withdrawn"
ERASURES = "ops/erasures"
WITHDRAWN_SCHEMA = pa.schema([
    ("name", pa.string()), ("version", pa.string()), ("reason", pa.string()),
    ("erasure_id", pa.string()), ("withdrawn_ns", pa.int64()),
])
ERASURES_SCHEMA = pa.schema([
    ("erasure_id", pa.string()), ("subject_sha256", pa.string()), ("date_from", pa.string()),
    ("date_to", pa.string()), ("reason", pa.string()), ("requested_by", pa.string()),
    ("erased_ns", pa.int64()), ("receipt", pa.string()),
])
MODEL_TAG = "robolake.dataset_withdrawn"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class Receipt:
    erasure_id: str
    subject_sha256: str
    date_from: str | None
    date_to: str | None
    reason: str
    uploads: list[str] = field(default_factory=list)  # erased whole
    # recordings crossing the window's edge: {upload_id, start_ns, end_ns, kept, note}
    partial_uploads: list[dict] = field(default_factory=list)
    tables: list[dict] = field(default_factory=list)  # {table, version, rows, files_removed}
    files_deleted: list[str] = field(default_factory=list)
    datasets_withdrawn: list[str] = field(default_factory=list)
    models_tagged: list[str] = field(default_factory=list)
    purged: list[dict] = field(default_factory=list)  # {table, files_vacuumed, logs_removed}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def subject_hash(robot_id: str) -> str:
    return hashlib.sha256(robot_id.encode()).hexdigest()


def erased_windows(lake: Store, robot_id: str) -> list[Window]:
    """The erase windows recorded for a robot in ops/erasures. Rows inside them must never
    come back, e.g. when a recording that crossed a window's edge (its raw copy kept) is
    cleaned again by a backfill."""
    table = read_table(lake, ERASURES, columns=["date_from", "date_to"],
                       filters={"subject_sha256": subject_hash(robot_id)})
    return [] if table is None else [Window(r["date_from"], r["date_to"])
                                     for r in table.to_pylist()]


def _check_request(robot_id: str, reason: str, start: str | None, end: str | None) -> None:
    if not robot_id.strip():
        raise ValueError("erase: --robot-id must name a robot")
    if not reason.strip():
        raise ValueError("erase: --reason is required (it is kept with the receipt)")
    for name, value in (("--from", start), ("--to", end)):
        if value is not None and not _DATE.match(value):
            raise ValueError(f"erase: {name} {value!r} is not a date (expected YYYY-MM-DD)")
        if value is not None:
            date.fromisoformat(value)
    if start and end and start > end:
        raise ValueError(f"erase: --from {start} is after --to {end}")


@dataclass(frozen=True)
class Window:
    """Days `start`..`end` (None: open) as ts_ns bounds [lo, hi)."""

    start: str | None
    end: str | None

    @property
    def whole(self) -> bool:
        return self.start is None and self.end is None

    @property
    def lo(self) -> int | None:
        return None if self.start is None else _day_ns(self.start)

    @property
    def hi(self) -> int | None:
        return None if self.end is None else _day_ns(self.end) + DAY_NS

    def ts_terms(self, column: str = "ts_ns") -> list[str]:
        return ([f"{column} >= {self.lo}"] if self.start else []) + (
            [f"{column} < {self.hi}"] if self.end else [])


DAY_NS = 86_400 * 10**9


def _day_ns(day: str) -> int:
    return (date.fromisoformat(day) - date(1970, 1, 1)).days * DAY_NS


def _upload_flags(window: Window) -> tuple[pl.Expr, pl.Expr]:
    """(overlaps the window, lies entirely inside it) per raw/uploads row; by the recording's
    time range, by its day when the range is unknown (an unreadable, quarantined file)."""
    start, end, day = pl.col("start_ns"), pl.col("end_ns"), pl.col("date")
    overlap = inside = day_in = pl.lit(True)
    if window.start:
        overlap, inside = overlap & (end >= window.lo), inside & (start >= window.lo)
        day_in = day_in & (day >= window.start)
    if window.end:
        overlap, inside = overlap & (start < window.hi), inside & (end < window.hi)
        day_in = day_in & (day <= window.end)
    unknown = start.is_null() | end.is_null()
    return (pl.when(unknown).then(day_in).otherwise(overlap),
            pl.when(unknown).then(day_in).otherwise(inside))


def _robot_uploads(lake: Store, robot_id: str, window: Window) -> pl.DataFrame:
    """The robot's uploads that overlap the window, `inside` marking those entirely in it."""
    columns = ["upload_id", "raw_key", "landing_key", "date", "status", "start_ns", "end_ns"]
    table = read_table(lake, "raw/uploads", columns=columns, filters={"robot_id": robot_id})
    frame = pl.from_arrow(table) if table is not None else pl.DataFrame(
        schema={**{c: pl.String for c in columns[:5]}, "start_ns": pl.Int64,
                "end_ns": pl.Int64})
    overlap, inside = _upload_flags(window)
    return frame.filter(overlap).with_columns(inside.alias("inside"))


def _table_predicate(table: catalog.Table, robot_id: str, window: Window,
                     inside_ids: list[str]) -> str | None:
    """Which rows of a per-robot table go: all the robot's without a window; with one, rows
    by their ts_ns, or (tables without ts_ns: one row per recording) the rows of the
    recordings entirely inside; None: nothing to delete."""
    from robolake.tables import sql_list

    robot = sql_equals({"robot_id": robot_id})
    if window.whole:
        return robot
    if any(c.name == "ts_ns" for c in table.columns):
        return " AND ".join([robot, *window.ts_terms()])
    return f"{robot} AND upload_id IN ({sql_list(inside_ids)})" if inside_ids else None


def _erase_rows(lake: Store, robot_id: str, inside_ids: list[str], window: Window,
                receipt: Receipt) -> None:
    """Rows per robot in every catalog table (the raw index last), the landing index's rows
    of the uploads erased whole."""
    from robolake.tables import delete_rows, sql_list

    order = sorted((t for t in catalog.TABLES.values() if t.robot_column),
                   key=lambda t: t.key == "raw/uploads")  # the index last: re-runs find them
    steps = [(t.key, _table_predicate(t, robot_id, window, inside_ids)) for t in order]
    steps = [(k, p) for k, p in steps if p is not None]
    if inside_ids:
        steps.insert(0, ("raw/landing_index", f"upload_id IN ({sql_list(inside_ids)})"))
    for key, predicate in steps:
        version, rows = delete_rows(lake, key, predicate)
        if version is None:
            continue
        removed = [a["remove"]["path"] for a in audit.commit_log(lake, key, version)
                   if "remove" in a]
        receipt.tables.append({"table": key, "version": version, "rows": rows,
                               "files_removed": removed})


PARTIAL_NOTE = ("the recording crosses the erase window: its rows inside the window, "
                "feature-cache entries and annotation media were erased; the files and rows "
                "listed in `kept` also hold data outside the window and were kept (erase a "
                "window covering the whole recording to remove them). Cleaning its days "
                "again (a backfill) leaves out the rows inside this robot's erase windows")


def _partial(row: dict, landing: Store | None) -> dict:
    kept = [row["raw_key"]] if row["raw_key"] else []
    kept += ["raw/uploads row", "cleaned/quality_reports row"]
    if landing is not None and row["landing_key"]:
        kept.append(f"landing:sha256:{subject_hash(row['landing_key'])}")
    return {"upload_id": row["upload_id"], "start_ns": row["start_ns"],
            "end_ns": row["end_ns"], "kept": kept, "note": PARTIAL_NOTE}


def _delete_files(lake: Store, landing: Store | None, uploads: pl.DataFrame,
                  receipt: Receipt) -> None:
    """Feature-cache entries and annotation media of every upload; raw and quarantine
    copies, landing files and sidecars of the uploads entirely inside the window; and the
    cold-folder twins of all of these (a tiered copy lies there)."""
    from robolake.governance.tiering import cold_twins

    for row in uploads.iter_rows(named=True):
        copies = []
        if not row["inside"]:
            receipt.partial_uploads.append(_partial(row, landing))
        elif row["raw_key"]:
            copies = [row["raw_key"], f"{row['raw_key']}.reasons.json"]
        folders = [f"{prefix}/{row['upload_id']}/" for prefix in ("features/cache", MEDIA_PREFIX)]
        keys = copies + cold_twins(lake, copies)
        keys += [o.key for folder in folders + cold_twins(lake, folders)
                 for o in lake.list(folder)]
        for key in keys:
            if lake.delete(key):
                receipt.files_deleted.append(key)
        if landing is not None and row["landing_key"] and row["inside"]:
            for key in (row["landing_key"], row["landing_key"] + SIDECAR_SUFFIX):
                if landing.delete(key):
                    # landing names often carry the robot id: the receipt keeps a hash
                    receipt.files_deleted.append(f"landing:sha256:{subject_hash(key)}")


def withdrawn_versions(lake: Store) -> dict[str, str]:
    """name@version -> reason of every withdrawn dataset version."""
    table = read_table(lake, WITHDRAWN)
    return {} if table is None else {f"{r['name']}@{r['version']}": r["reason"]
                                     for r in table.to_pylist()}


def _withdraw_datasets(lake: Store, upload_ids: set[str], reason: str,
                       receipt: Receipt) -> None:
    """Every dataset version built from any of the uploads: withdrawn with the reason, its
    shards deleted (the manifest stays, for lineage)."""
    from robolake.datasets.build import list_versions
    from robolake.datasets.shards import dataset_prefix

    rows = []
    for reg in list_versions(lake).iter_rows(named=True):
        manifest = json.loads(lake.read_bytes(reg["manifest_key"]))
        if not upload_ids & set(manifest.get("split_of_recording", {})):
            continue
        receipt.datasets_withdrawn.append(f"{reg['name']}@{reg['version']}")
        rows.append({"name": reg["name"], "version": reg["version"], "reason": reason,
                     "erasure_id": receipt.erasure_id, "withdrawn_ns": time.time_ns()})
        for obj in list(lake.list(dataset_prefix(reg["name"], reg["version"]) + "/")):
            if obj.key != reg["manifest_key"] and lake.delete(obj.key):
                receipt.files_deleted.append(obj.key)
    if rows:
        append_new_rows(lake, WITHDRAWN, rows, WITHDRAWN_SCHEMA, keys=("name", "version"))


def _tag_models(lake: Store, reason: str, receipt: Receipt) -> None:
    """MLflow model versions trained on a withdrawn dataset version get MODEL_TAG."""
    from robolake.governance.search import registry_exists

    if not receipt.datasets_withdrawn or not registry_exists(lake):
        return
    from robolake.models import tracking

    client = tracking.configure(lake)
    for mv in client.search_model_versions():
        tags = dict(mv.tags or {})
        trained_on = f"{tags.get('dataset.name')}@{tags.get('dataset.version')}"
        if trained_on in receipt.datasets_withdrawn:
            client.set_model_version_tag(mv.name, mv.version, MODEL_TAG,
                                         f"{trained_on}: {reason}")
            receipt.models_tagged.append(f"{mv.name}/{mv.version}")


def purge_table(lake: Store, key: str) -> dict:
    """Vacuum a table at retention 0 and drop its log before a fresh checkpoint, so no
    earlier version (nor a removed file's statistics in the log) still holds erased rows.
    Files of a write still in flight on this table can be lost: purge is for erasures."""
    table = open_table(lake, key)
    if table is None:
        return {"table": key, "files_vacuumed": [], "logs_removed": 0}
    vacuumed = table.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
    table = open_table(lake, key)
    table.create_checkpoint()
    latest = table.version()
    removed = 0
    for obj in list(lake.list(f"{key}/_delta_log/")):
        name = obj.key.rsplit("/", 1)[-1]
        head = name.split(".", 1)[0]
        if head.isdigit() and int(head) < latest and lake.delete(obj.key):
            removed += 1
    return {"table": key, "files_vacuumed": sorted(vacuumed), "logs_removed": removed}


def erase_robot(lake: Store, robot_id: str, reason: str, start: str | None = None,
                end: str | None = None, landing: Store | None = None,
                purge_now: bool = False) -> Receipt:
    """Erase one robot's data (see the module doc); returns the receipt, also kept in
    ops/erasures. Re-running finishes an interrupted erase and is a no-op after one."""
    _check_request(robot_id, reason, start, end)
    window = Window(start, end)
    receipt = Receipt(uuid.uuid4().hex, subject_hash(robot_id), start, end, reason)
    uploads = _robot_uploads(lake, robot_id, window)
    receipt.uploads = sorted(uploads.filter(pl.col("inside"))["upload_id"].to_list())
    _withdraw_datasets(lake, set(uploads["upload_id"]), reason, receipt)
    _tag_models(lake, reason, receipt)
    _delete_files(lake, landing, uploads.sort("upload_id"), receipt)
    receipt.files_deleted += [f"rewritten:{k}" for k in erase_robot_tasks(lake, robot_id, start,
                                                                          end)]
    _erase_rows(lake, robot_id, receipt.uploads, window, receipt)
    if purge_now:
        receipt.purged = [purge_table(lake, t["table"]) for t in receipt.tables]
    _record(lake, receipt)
    return receipt


def _record(lake: Store, receipt: Receipt) -> None:
    who = audit.current_actor()
    append_new_rows(lake, ERASURES, [{
        "erasure_id": receipt.erasure_id, "subject_sha256": receipt.subject_sha256,
        "date_from": receipt.date_from, "date_to": receipt.date_to, "reason": receipt.reason,
        "requested_by": who.name, "erased_ns": time.time_ns(), "receipt": receipt.to_json(),
    }], ERASURES_SCHEMA, keys=("erasure_id",))
    subject = f"robot:{receipt.subject_sha256}"
    audit.record(lake, "erase", subject, files=receipt.files_deleted, details={
        "erasure_id": receipt.erasure_id, "reason": receipt.reason,
        "uploads": len(receipt.uploads), "datasets_withdrawn": receipt.datasets_withdrawn,
        "partial_uploads": [p["upload_id"] for p in receipt.partial_uploads],
        "models_tagged": receipt.models_tagged,
        "tables": {t["table"]: t["version"] for t in receipt.tables}})
    if receipt.purged:
        audit.record(lake, "purge", subject, files=[
            f"{p['table']}/{f}" for p in receipt.purged for f in p["files_vacuumed"]],
            details={"erasure_id": receipt.erasure_id,
                     "logs_removed": {p["table"]: p["logs_removed"] for p in receipt.purged}})
