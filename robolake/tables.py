"""Delta tables in the lake: thin helpers over deltalake shared by every layer.

Writes that several writers may race on are *keyed commits* (`commit_keyed`):
the writer reads a snapshot, decides what to write from it (only keys the
snapshot lacks, or a replacement of exactly its own keys), and commits against
that snapshot's version with no automatic rebase. If another writer committed
in between, the commit fails; the writer re-reads and decides again, so a
second writer of the same key skips it instead of duplicating it. This is
Delta's optimistic concurrency (a conditional put of the next log entry, also
on S3), with the conflict rule "any commit since my read".
"""

from __future__ import annotations

import io
import json
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from robolake.storage import Store

COMMIT_ATTEMPTS = 60  # a busy table: each failed attempt means another writer made progress


class CommitConflict(RuntimeError):
    """Other writers kept committing to the table for every one of our attempts."""


def open_table(lake: Store, key: str) -> DeltaTable | None:
    try:
        return DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    except TableNotFoundError:
        return None


@dataclass(frozen=True)
class Between:
    """A filter value: lo <= column <= hi (pushed down to the files' statistics)."""

    lo: int
    hi: int


def _scan(lake: Store, key: str, version: int | None, columns: Sequence[str] | None,
          filters: dict[str, object] | None, available: Sequence[str]) -> pl.DataFrame:
    frame = pl.scan_delta(lake.table_uri(key), version=version,
                          storage_options=lake.delta_options or None)
    for col, value in (filters or {}).items():
        if isinstance(value, Between):
            frame = frame.filter(pl.col(col).is_between(value.lo, value.hi))
        elif isinstance(value, list | tuple | set | frozenset):
            frame = frame.filter(pl.col(col).is_in(list(value)))
        else:
            frame = frame.filter(pl.col(col) == value)
    if columns:
        # columns added by a later schema (e.g. on an older lake) read as nulls
        frame = frame.select([pl.col(c) if c in available else pl.lit(None).alias(c)
                              for c in columns])
    return frame.collect()


def read_table(lake: Store, key: str, columns: Sequence[str] | None = None,
               filters: dict[str, object] | None = None,
               version: int | None = None) -> pa.Table | None:
    """The table (its current version, or `version`) as Arrow with equality (or, for a
    list, membership; for `Between`, a closed range) filters, or None if it does not exist.

    Read through polars: a pyarrow dataset from deltalake left alive at
    interpreter exit aborts the process ("terminate called without an active
    exception").
    """
    table = open_table(lake, key)
    if table is None:
        return None
    names = [f.name for f in table.schema().fields]
    return _scan(lake, key, version, columns, filters, names).to_arrow()


def add_actions(table: DeltaTable) -> pl.DataFrame:
    """The table's live files: path, size_bytes, num_records, partition.*, min.*, max.*."""
    return pl.DataFrame(pa.table(table.get_add_actions(flatten=True)))  # arro3 -> arrow


def partition_rows(lake: Store, key: str, partition: dict[str, str]) -> int:
    """Rows of the table in the partitions matching `partition` (equality on partition
    columns), from the live files' statistics: no data is read."""
    table = open_table(lake, key)
    if table is None:
        return 0
    adds = add_actions(table)
    for col, value in partition.items():
        adds = adds.filter(pl.col(f"partition.{col}") == value)
    return int(adds["num_records"].sum() or 0)


@dataclass
class Snapshot:
    """One version of a table (or its absence) that a keyed commit is decided on."""

    lake: Store
    key: str
    table: DeltaTable | None

    @property
    def version(self) -> int | None:
        return self.table.version() if self.table is not None else None

    def read(self, columns: Sequence[str], filters: dict[str, object] | None = None,
             schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
        """Rows of this version (an empty frame with `schema`'s types if no table)."""
        if self.table is None:
            schema = schema or {}
            return pl.DataFrame(schema={c: schema.get(c, pl.String) for c in columns})
        names = [f.name for f in self.table.schema().fields]
        return _scan(self.lake, self.key, self.version, columns, filters, names)


@dataclass
class Write:
    """What a keyed commit writes: rows appended, or (with `predicate`) the rows matching
    the predicate replaced by `data`."""

    data: pa.Table
    predicate: str | None = None
    metadata: dict[str, str] | None = None  # stored in the commit's commitInfo


def _audited(lake: Store, key: str, version: int) -> int:
    """Record a commit in the audit log (robolake.governance.audit), which is itself a
    Delta table and therefore not audited again; returns the version."""
    from robolake.governance import audit

    if key != audit.AUDIT and audit.enabled():
        audit.record_commit(lake, key, version)
    return version


def _is_conflict(exc: Exception) -> bool:
    # a concurrent commit of the same version, or a concurrent creation of the table
    return isinstance(exc, CommitFailedError) or (
        isinstance(exc, DeltaError) and "already exists" in str(exc))


def commit_keyed(lake: Store, key: str, plan: Callable[[Snapshot], Write | None],
                 partition_by: Sequence[str] | None = None,
                 attempts: int = COMMIT_ATTEMPTS) -> int | None:
    """Decide a write on the latest snapshot and commit it against exactly that version.

    `plan` reads what it needs through the snapshot and returns the write (or None:
    nothing to do). When another writer commits first, the commit fails, and `plan`
    runs again on the new snapshot. Returns the table version after the write (or the
    snapshot's version when there was nothing to write; None if there is no table).
    """
    for attempt in range(attempts):
        snap = Snapshot(lake, key, open_table(lake, key))
        write = plan(snap)
        if write is None:
            return snap.version
        props = CommitProperties(max_commit_retries=0, custom_metadata=write.metadata)
        try:
            if snap.table is None:  # create it; a concurrent creator makes this conflict
                write_deltalake(lake.table_uri(key), write.data, mode="error",
                                partition_by=list(partition_by) if partition_by else None,
                                storage_options=lake.delta_options or None,
                                commit_properties=props)
                return _audited(lake, key, 0)
            names = {f.name for f in snap.table.schema().fields}
            write_deltalake(
                snap.table, write.data,
                mode="overwrite" if write.predicate else "append",
                predicate=write.predicate,
                # new columns (a later version of the schema) are added to an older table
                schema_mode="merge" if set(write.data.column_names) - names else None,
                commit_properties=props)
            return _audited(lake, key, snap.table.version())
        except (CommitFailedError, DeltaError) as exc:
            if not _is_conflict(exc):
                raise
            time.sleep(min(2.0, 0.02 * 1.5**attempt) * (0.5 + random.random()))
    raise CommitConflict(f"{lake.table_uri(key)}: other writers committed first {attempts} "
                         "times in a row; try again later")


def delete_rows(lake: Store, key: str, predicate: str) -> tuple[int | None, int]:
    """Delete the rows matching `predicate` in one commit (Delta's own conflict check
    retries it against concurrent writers of the same files); returns (the new version or
    None when nothing matched or there is no table, rows deleted). Audited as a write."""
    table = open_table(lake, key)
    if table is None:
        return None, 0
    metrics = table.delete(predicate)
    deleted = int(metrics.get("num_deleted_rows", 0))
    if not deleted and not metrics.get("num_removed_files", 0):
        return None, 0
    return _audited(lake, key, table.version()), deleted


def sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def sql_equals(terms: dict[str, str]) -> str:
    return " AND ".join(f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in terms.items())


def append_new_rows(lake: Store, key: str, rows: list[dict], schema: pa.Schema,
                    keys: Sequence[str], partition_by: Sequence[str] | None = None,
                    scope: dict[str, str] | None = None) -> tuple[int | None, list[dict]]:
    """Append the rows whose `keys` the table does not hold yet, exactly once whatever
    else writes at the same time. `scope` (equality filters on partition columns) bounds
    what is read to find existing keys. Returns (version, the rows this call wrote)."""
    written: list[dict] = []

    def plan(snap: Snapshot) -> Write | None:
        existing = snap.read(list(keys), filters=scope)
        seen = set(existing.iter_rows()) if existing.height else set()
        fresh, batch = [], set()
        for r in rows:
            k = tuple(r[c] for c in keys)
            if k not in seen and k not in batch:
                batch.add(k)
                fresh.append(r)
        written[:] = fresh
        return Write(pa.Table.from_pylist(fresh, schema=schema)) if fresh else None

    version = commit_keyed(lake, key, plan, partition_by)
    return version, written


def append_rows(lake: Store, key: str, rows: list[dict], schema: pa.Schema,
                partition_by: Sequence[str] | None = None) -> int:
    """Append rows in one commit (no keys: for logs where every row is new); returns the
    new table version."""
    data = pa.Table.from_pylist(rows, schema=schema)
    version = commit_keyed(lake, key, lambda _snap: Write(data), partition_by)
    assert version is not None
    return version


def overwrite_table(lake: Store, key: str, data: pa.Table,
                    partition_by: Sequence[str] | None = None) -> int:
    """Replace the whole table's contents in one commit (earlier versions stay readable)."""
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            write_deltalake(lake.table_uri(key), data, mode="overwrite", schema_mode="overwrite",
                            partition_by=list(partition_by) if partition_by else None,
                            storage_options=lake.delta_options or None)
            break
        except (CommitFailedError, DeltaError) as exc:
            if not _is_conflict(exc) or attempt == COMMIT_ATTEMPTS - 1:
                raise
            time.sleep(min(2.0, 0.02 * 1.5**attempt) * (0.5 + random.random()))
    table = open_table(lake, key)
    assert table is not None
    return _audited(lake, key, table.version())


def replace_rows(lake: Store, key: str, data: pa.Table | Callable[[Snapshot], pa.Table],
                 column: str, values: Sequence[str],
                 partition_by: Sequence[str] | None = None,
                 scope: dict[str, str] | None = None) -> int:
    """Replace every row whose `column` is in `values` with `data`, in one keyed commit.

    Re-running a partition therefore replaces exactly its rows (`scope` adds
    equality terms on partition columns so the rewrite touches only their files).
    `data` may be a function of the snapshot (rows that depend on what else the
    table holds); it is called again if another writer commits first. Returns the
    new table version.
    """
    terms = [sql_equals(scope)] if scope else []
    terms.append(f"{column} IN ({sql_list(values)})" if values else "false")
    predicate = " AND ".join(terms)

    def plan(snap: Snapshot) -> Write:
        rows = data(snap) if callable(data) else data
        return Write(rows, predicate=predicate)

    version = commit_keyed(lake, key, plan, partition_by)
    assert version is not None
    return version


# ------------------------------------------------------------------- files written elsewhere
# The Spark engine's tasks write Parquet part files straight into a table's folder; the
# driver commits them with delta-rs. A file is in the table only once a commit adds it, so
# files of failed or superseded attempts are never read (maintenance's VACUUM deletes them).


@dataclass(frozen=True)
class PartFile:
    """A Parquet file written into a table's folder, not yet committed."""

    path: str  # relative to the table root, as stored (partition folders / file name)
    size: int
    partition_values: dict[str, str]
    stats: str  # Delta's per-file statistics (JSON)
    rows: int

    def add_action(self):
        from deltalake.transaction import AddAction

        return AddAction(quote(self.path, safe="/="), self.size, self.partition_values,
                         int(time.time() * 1000), True, self.stats)


def _stats(frame: pl.DataFrame) -> str:
    """numRecords, nullCount and min/max of the plain columns (what delta-rs writes, so
    readers prune files the same way whichever engine wrote them)."""
    mins, maxs, nulls = {}, {}, {}
    for name, dtype in frame.schema.items():
        col = frame[name]
        if dtype.is_nested():
            continue
        nulls[name] = col.null_count()
        if dtype.is_float() and (col.is_nan().any() or col.is_infinite().any()):
            continue  # JSON has no NaN; without bounds a reader just does not prune
        if dtype.is_numeric() or dtype == pl.String:
            lo, hi = col.min(), col.max()
            if lo is not None:
                mins[name], maxs[name] = lo, hi
    return json.dumps({"numRecords": frame.height, "minValues": mins, "maxValues": maxs,
                       "nullCount": nulls})


def write_part_files(lake: Store, key: str, frame: pl.DataFrame, partition_by: Sequence[str],
                     tag: str) -> list[PartFile]:
    """Write `frame` as one Parquet file per partition under the table's folder (partition
    columns in the path, not in the file, as Delta lays them out); commits nothing."""
    if frame.is_empty():
        return []
    files = []
    for values, part in frame.group_by(list(partition_by), maintain_order=True):
        pv = {c: str(v) for c, v in zip(partition_by, values, strict=True)}
        folder = "/".join(f"{c}={v}" for c, v in pv.items())
        rel = f"{folder}/part-{tag}-{uuid.uuid4().hex}.snappy.parquet"
        data = part.drop(list(partition_by))
        buf = io.BytesIO()
        data.write_parquet(buf, compression="snappy")  # polars: ~3x pyarrow's writer here
        lake.write_bytes(f"{key}/{rel}", buf.getvalue())
        files.append(PartFile(rel, buf.tell(), pv, _stats(data), data.height))
    return files


def read_part_files(lake: Store, key: str, files: Sequence[PartFile],
                    schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows of uncommitted part files, partition columns restored, in `schema`'s order."""
    parts = [pl.read_parquet(io.BytesIO(lake.read_bytes(f"{key}/{f.path}"))).with_columns(
        *[pl.lit(v).alias(c) for c, v in f.partition_values.items()]) for f in files]
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts).select([pl.col(c).cast(t) for c, t in schema.items()])


@dataclass
class FileCommit:
    """What a files commit does: add these part files, remove these committed files."""

    adds: list[PartFile]
    removes: list  # deltalake RemoveAction


def replace_files(lake: Store, key: str, table: DeltaTable, column: str,
                  values: Sequence[str], scope: dict[str, str]) -> FileCommit:
    """The actions that take every row whose `column` is in `values` (within `scope`'s
    partitions) out of the table: files holding only such rows are removed; a file mixing
    them with other rows is rewritten without them (new file added, old one removed), as
    a predicate delete would. Files are pruned by their statistics, then `column` is read."""
    from deltalake.transaction import RemoveAction

    change = FileCommit([], [])
    wanted = set(values)
    if not wanted:
        return change
    adds = add_actions(table)
    for col, value in scope.items():
        adds = adds.filter(pl.col(f"partition.{col}") == value)
    lo, hi = min(wanted), max(wanted)
    if f"min.{column}" in adds.columns:
        adds = adds.filter(pl.col(f"min.{column}").is_null() | pl.col(f"max.{column}").is_null()
                           | ((pl.col(f"min.{column}") <= hi) & (pl.col(f"max.{column}") >= lo)))
    part_cols = [c for c in adds.columns if c.startswith("partition.")]
    now_ms = int(time.time() * 1000)
    for row in adds.iter_rows(named=True):
        raw = lake.read_bytes(f"{key}/{unquote(row['path'])}")
        held = set(pq.read_table(io.BytesIO(raw), columns=[column]).column(column).to_pylist())
        if not held & wanted:
            continue
        pv = {c.removeprefix("partition."): row[c] for c in part_cols}
        change.removes.append(RemoveAction(row["path"], True, now_ms, row["size_bytes"], pv))
        if not held <= wanted:
            rest = pl.read_parquet(io.BytesIO(raw)).filter(~pl.col(column).is_in(list(wanted)))
            rest = rest.with_columns(*[pl.lit(v).alias(c) for c, v in pv.items()])
            change.adds.extend(write_part_files(lake, key, rest, list(pv), "rewrite"))
    return change


def commit_files(lake: Store, key: str, plan: Callable[[Snapshot], FileCommit | None],
                 schema: pa.Schema, partition_by: Sequence[str],
                 attempts: int = COMMIT_ATTEMPTS,
                 metadata: dict[str, str] | None = None) -> int | None:
    """Commit files written elsewhere in one Delta transaction, decided on the latest
    snapshot and committed against exactly that version (as `commit_keyed`): when another
    writer commits first, `plan` runs again on the new snapshot. `metadata` goes into the
    commit's commitInfo. Returns the version."""
    from deltalake import Schema as DeltaSchema
    from deltalake.transaction import create_table_with_add_actions

    for attempt in range(attempts):
        snap = Snapshot(lake, key, open_table(lake, key))
        change = plan(snap)
        if change is None:
            return snap.version
        props = CommitProperties(max_commit_retries=0, custom_metadata=metadata)
        actions = [f.add_action() for f in change.adds]
        try:
            if snap.table is None:
                create_table_with_add_actions(
                    lake.table_uri(key), DeltaSchema.from_arrow(schema), actions, mode="error",
                    partition_by=list(partition_by),
                    storage_options=lake.delta_options or None, commit_properties=props)
                return _audited(lake, key, 0)
            snap.table.create_write_transaction(
                [*actions, *change.removes], mode="append", schema=snap.table.schema(),
                partition_by=list(partition_by), commit_properties=props)
            # no retries: the commit took exactly the version after the snapshot's
            return _audited(lake, key, snap.table.version() + 1)
        except (CommitFailedError, DeltaError) as exc:
            if not _is_conflict(exc):
                raise
            time.sleep(min(2.0, 0.02 * 1.5**attempt) * (0.5 + random.random()))
    raise CommitConflict(f"{lake.table_uri(key)}: other writers committed first {attempts} "
                         "times in a row; try again later")
