"""Data skipping: cluster the cleaned tables by (robot_id, ts_ns), and prune files by the
Delta log's per-file statistics.

Two ways to rewrite a partition, both a rewrite, not new data (dataChange=false):

- "sort" (the default, METHOD): read the partition at a snapshot, sort it by
  (robot_id, ts_ns), write files of about the target size (never two robots in one
  file) and commit them with the
  partition's old files removed as one keyed files commit (robolake.tables.commit_files:
  decided on a snapshot, committed against exactly that version, re-planned when another
  writer committed first). Each file then holds one robot's stretch of time, so a
  one-robot-hour query reads one to three files (benchmarks/data_skipping.py).
- "zorder": delta-rs' `DeltaTable.optimize.z_order`, with Delta's own conflict check.
  In deltalake 1.6.6 its key is not a Z-order curve for two or more columns: within each
  byte of a column the low nibble sorts before the high nibble (two int64 columns, x =
  0..63, y constant, come out 0, 16, 32, 48, 1, 17, ...), so an hour of ts_ns is spread
  over ~18-minute slots across the day and a one-robot-hour query still reads about a
  quarter of the files (measured in the benchmark). Kept for when delta-rs fixes it.

Either commit is stamped in its commit metadata (ZORDER_KEY) and checked: the
partition's rows and an order-independent content checksum at that commit's version
equal those of the version just before it (the commit itself, so concurrent appends in
other commits cannot blur the check). A partition is rewritten only when it holds at
least `MIN_FILES` files and one of them was not added by such a commit, so a re-run
with no new writes does nothing. (Once the log's JSON of a clustering commit is cleaned
up, delta.logRetentionDuration, 30 days by default, its files count as unsorted again
and the partition is rewritten once more.) The sort holds one partition in memory; the
delta-rs Z-order spills.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote

import numpy as np
import polars as pl
from deltalake import CommitProperties, DeltaTable

from robolake.storage import Store
from robolake.tables import (
    FileCommit,
    PartFile,
    Snapshot,
    add_actions,
    commit_files,
    write_part_files,
)

ZORDER_COLUMNS = ("robot_id", "ts_ns")
ZORDER_LAYERS = ("cleaned/",)
MIN_FILES = 2
ZORDER_KEY = "robolake.zorder"  # commit metadata: method, columns, partition, an id
METHOD = "sort"  # or "zorder" (delta-rs' optimize.z_order; see the module doc)


class ZOrderChangedDataError(RuntimeError):
    """A Z-order commit changed the rows it should only have reordered."""


@dataclass
class ZOrderResult:
    partitions: list[dict] = field(default_factory=list)  # the partitions rewritten
    files_removed: int = 0
    files_added: int = 0
    rows: int = 0  # rows rewritten (unchanged by construction, checked)
    audited: list[int] = field(default_factory=list)  # versions audited by their commit


def zorder_columns(lake: Store, key: str, table: DeltaTable) -> tuple[str, ...]:
    """The Z-order columns for this table: (robot_id, ts_ns) on a cleaned table that has
    both, else () (the table is only compacted)."""
    names = {f.name for f in table.schema().fields}
    wanted = key.startswith(ZORDER_LAYERS) and set(ZORDER_COLUMNS) <= names
    return ZORDER_COLUMNS if wanted else ()


def _partition_filter(part: dict[str, str]) -> pl.Expr:
    expr = pl.lit(True)
    for col, value in part.items():
        expr = expr & (pl.col(f"partition.{col}") == value)
    return expr


def zordered_files(lake: Store, key: str, table: DeltaTable) -> set[str]:
    """Paths (decoded) of the files that Z-order commits still in the log added."""
    from robolake.governance.audit import commit_log

    done: set[str] = set()
    for commit in table.history():
        if ZORDER_KEY in commit:
            done.update(unquote(a["add"]["path"])
                        for a in commit_log(lake, key, int(commit["version"])) if "add" in a)
    return done


def partitions_to_zorder(lake: Store, key: str, table: DeltaTable,
                         min_files: int = MIN_FILES) -> list[dict[str, str]]:
    """Partitions with at least `min_files` files of which one or more was not written by
    a Z-order (a partition with a null partition value is left alone: it cannot be
    filtered on)."""
    adds = add_actions(table)
    done = zordered_files(lake, key, table)
    adds = adds.with_columns(pl.col("path").map_elements(lambda p: unquote(p) in done,
                                                         return_dtype=pl.Boolean).alias("z"))
    cols = [c for c in adds.columns if c.startswith("partition.")]
    if not cols:
        return [{}] if adds.height >= min_files and not adds["z"].all() else []
    parts = (adds.group_by(cols).agg(pl.len().alias("n"), pl.col("z").all().alias("z"))
             .filter((pl.col("n") >= min_files) & ~pl.col("z")).sort(cols))
    return [{c.removeprefix("partition."): str(row[c]) for c in cols}
            for row in parts.drop("n", "z").iter_rows(named=True)
            if all(row[c] is not None for c in cols)]


def content_checksum(lake: Store, key: str, version: int,
                     partition: dict[str, str] | None = None) -> tuple[int, int]:
    """(rows, checksum) of one version of a table (or one partition of it): the wrapping
    sum of every row's hash over the columns in name order, so the order of rows and
    files does not matter but any changed, lost or duplicated row does."""
    frame = pl.scan_delta(lake.table_uri(key), version=version,
                          storage_options=lake.delta_options or None)
    for col, value in (partition or {}).items():
        frame = frame.filter(pl.col(col).cast(pl.String) == value)
    data = frame.collect()
    data = data.select(sorted(data.columns))
    hashes = data.hash_rows(seed=0).to_numpy()
    return data.height, int(hashes.sum(dtype=np.uint64))


def _check_rewrite(lake: Store, key: str, part: dict[str, str], version: int) -> int:
    """Rows of the partition at `version`, after checking that this commit kept the
    partition's content (rows and checksum equal to the version before)."""
    before = content_checksum(lake, key, version - 1, part)
    after = content_checksum(lake, key, version, part)
    if before != after:
        raise ZOrderChangedDataError(
            f"{key} {part}: rewrite commit {version} changed the partition's content "
            f"(rows, checksum) {before} -> {after}; restore version {version - 1}")
    return after[0]


def zorder_partition(lake: Store, key: str, part: dict[str, str], columns: tuple[str, ...],
                     target_size: int) -> dict:
    """Z-order one partition with delta-rs in one commit and check it kept the content;
    returns the optimize metrics plus the version and rows."""
    table = DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    stamp = _stamp("zorder", columns, part)
    metrics = table.optimize.z_order(
        list(columns), partition_filters=[(c, "=", v) for c, v in part.items()] or None,
        target_size=target_size, max_concurrent_tasks=1,
        commit_properties=CommitProperties(custom_metadata={ZORDER_KEY: stamp}))
    if not metrics.get("numFilesAdded") and not metrics.get("numFilesRemoved"):
        return {**metrics, "version": None, "rows": 0}
    version = _commit_version(lake, key, stamp)
    return {**metrics, "version": version, "rows": _check_rewrite(lake, key, part, version)}


def _stamp(method: str, columns: tuple[str, ...], part: dict[str, str]) -> str:
    return json.dumps({"method": method, "columns": list(columns), "partition": part,
                       "id": uuid.uuid4().hex})


class _RewrittenFile(PartFile):
    """A part file that holds rows already in the table: added with dataChange=false."""

    def add_action(self):
        return dataclasses.replace(super().add_action(), data_change=False)


def _chunks(frame: pl.DataFrame, first: str, per_file: int) -> list[pl.DataFrame]:
    """The sorted rows in files of about `per_file` rows that never span two values of
    the first column (a file holding the end of one robot and the start of the next
    would match every hour of both), balanced within each value."""
    out = []
    for group in frame.partition_by(first, maintain_order=True):
        n = -(-group.height // per_file)
        size = -(-group.height // n)
        out += [group.slice(i, size) for i in range(0, group.height, size)]
    return out


def _sort_plan(part: dict[str, str], columns: tuple[str, ...], target_size: int,
               partition_by: list[str]):
    """The plan of a sorted rewrite of one partition, decided on a snapshot."""
    from deltalake.transaction import RemoveAction

    def plan(snap: Snapshot) -> FileCommit | None:
        adds = add_actions(snap.table).filter(_partition_filter(part))
        if adds.height < MIN_FILES:
            return None
        names = [f.name for f in snap.table.schema().fields]
        frame = snap.read(names, filters=part).sort(list(columns))
        per_file = max(1, frame.height * target_size // max(int(adds["size_bytes"].sum()), 1))
        change, now_ms = FileCommit([], []), int(time.time() * 1000)
        for chunk in _chunks(frame, columns[0], per_file):
            change.adds += [_RewrittenFile(**vars(f)) for f in
                            write_part_files(snap.lake, snap.key, chunk, partition_by, "sorted")]
        change.removes = [RemoveAction(p, False, now_ms, size, part) for p, size in
                          zip(adds["path"].to_list(), adds["size_bytes"].to_list(), strict=True)]
        return change
    return plan


def sort_partition(lake: Store, key: str, part: dict[str, str], columns: tuple[str, ...],
                   target_size: int) -> dict:
    """Rewrite one partition sorted by `columns` into files of about `target_size`, as a
    keyed files commit (robolake.tables.commit_files: decided on a snapshot, committed
    against exactly its version, re-planned if another writer committed first) with
    dataChange=false, then check it kept the content."""
    table = DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    partition_by = list(table.metadata().partition_columns)
    removed: list[int] = []
    plan = _sort_plan(part, columns, target_size, partition_by)

    def counted(snap: Snapshot) -> FileCommit | None:
        change = plan(snap)
        removed[:] = [len(change.removes), len(change.adds)] if change else [0, 0]
        return change

    before = table.version()
    version = commit_files(lake, key, counted, table.schema().to_arrow(), partition_by,
                           metadata={ZORDER_KEY: _stamp("sort", columns, part)})
    if version is None or version == before or not removed[0]:
        return {"numFilesRemoved": 0, "numFilesAdded": 0, "version": None, "rows": 0}
    return {"numFilesRemoved": removed[0], "numFilesAdded": removed[1], "version": version,
            "rows": _check_rewrite(lake, key, part, version), "audited": True}


def _commit_version(lake: Store, key: str, stamp: str) -> int:
    """The version our commit took (found by its stamp: other writers may have committed
    after it, or before it when delta-rs rebased the rewrite onto their commits)."""
    table = DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    for commit in table.history(50):
        if commit.get(ZORDER_KEY) == stamp:
            return int(commit["version"])
    raise ZOrderChangedDataError(f"{key}: the Z-order commit {stamp} is not in the last 50 "
                                 "commits; cannot check it")


def zorder_table(lake: Store, key: str, target_size: int,
                 columns: tuple[str, ...] = ZORDER_COLUMNS, method: str | None = None
                 ) -> ZOrderResult:
    """Cluster every partition of the table that needs it (see the module doc) by
    `method`: "sort" (default, METHOD) or delta-rs' "zorder"."""
    rewrite = {"sort": sort_partition, "zorder": zorder_partition}[method or METHOD]
    table = DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    result = ZOrderResult()
    for part in partitions_to_zorder(lake, key, table):
        metrics = rewrite(lake, key, part, columns, target_size)
        if metrics["rows"]:
            result.partitions.append(part)
        result.files_removed += int(metrics.get("numFilesRemoved", 0))
        result.files_added += int(metrics.get("numFilesAdded", 0))
        result.rows += metrics["rows"]
        if metrics.get("audited"):
            result.audited.append(metrics["version"])
    return result


# --------------------------------------------------------------------------- data skipping


def files_for(table: DeltaTable, partition: dict[str, str],
              ranges: dict[str, tuple[object, object]]) -> tuple[list[str], int]:
    """The live files of one partition that may hold rows with every column in its
    [lo, hi] range, by the log's min/max statistics (a file without them is kept), and
    how many files the partition has. Paths are relative to the table root."""
    adds = add_actions(table).filter(_partition_filter(partition))
    total = adds.height
    for col, (lo, hi) in ranges.items():
        if f"min.{col}" not in adds.columns:
            continue
        lo_col, hi_col = pl.col(f"min.{col}"), pl.col(f"max.{col}")
        adds = adds.filter(lo_col.is_null() | hi_col.is_null()
                           | ((lo_col <= hi) & (hi_col >= lo)))
    return [unquote(p) for p in adds["path"].to_list()], total


def read_range(lake: Store, key: str, files: list[str],
               ranges: dict[str, tuple[object, object]]) -> pl.DataFrame:
    """Rows of the given files (table-relative paths) with every column in its range."""
    if not files:
        return pl.DataFrame()
    base = lake.table_uri(key).rstrip("/")
    frame = pl.scan_parquet([f"{base}/{f}" for f in files],
                            storage_options=lake.delta_options or None)
    for col, (lo, hi) in ranges.items():
        frame = frame.filter(pl.col(col).is_between(pl.lit(lo), pl.lit(hi)))
    return frame.collect()
