"""What is left to ingest: the one answer the CLI and the upload sensor share.

A landing file is done through the raw layer when its bytes are indexed in `raw/uploads`
(same key, size and arrival time, or a touched file recognised in `raw/landing_index`);
through the cleaned layer when, in addition, a usable upload has its `cleaned/quality_reports`
row. The sensor asks this about the files its cursor calls new, so a first `make ui` after
`make demo` does not run the demo's files again.
"""

from __future__ import annotations

from robolake import cleaned, contract, raw
from robolake.storage import Store
from robolake.tables import read_table


class Progress:
    """What the lake holds: indexed uploads, recognised landing versions, cleaned reports."""

    def __init__(self, indexed: list[dict], seen_versions: set[tuple[str, str]],
                 reported: set[str]):
        self.indexed, self.seen_versions, self.reported = indexed, seen_versions, reported
        self._by_file = {(r["date"], r["robot_type"], r["landing_key"], r["size_bytes"],
                          r["arrived_ns"]): r for r in indexed}
        self._by_id = {(r["upload_id"], r["date"]): r for r in indexed}

    def upload_of(self, a: raw.Assignment) -> dict | None:
        """The raw/uploads row of an assignment's file, when its bytes are indexed."""
        if a.indexed_as and (a.indexed_as, a.date) in self._by_id:
            return self._by_id[(a.indexed_as, a.date)]
        return self._by_file.get((a.date, a.robot_type, a.file.key, a.file.size,
                                  a.file.mtime_ns))

    def done(self, a: raw.Assignment, through: str) -> bool:
        row = self.upload_of(a)
        indexed = row is not None or (a.file.key, a.file.version) in self.seen_versions
        if not indexed or through == "raw":
            return indexed
        if row is None:  # recognised as already indexed bytes under another row
            return True
        return row["status"] not in contract.USABLE_STATUSES or row["upload_id"] in self.reported

    def unreported(self) -> set[tuple[str, str]]:
        """Partitions with usable uploads the cleaned layer has not reported on."""
        return {(r["date"], r["robot_type"]) for r in self.indexed
                if r["status"] in contract.USABLE_STATUSES and r["upload_id"] not in self.reported}


def read_progress(lake: Store) -> Progress:
    table = read_table(lake, raw.RAW_UPLOADS,
                       columns=["landing_key", "size_bytes", "arrived_ns", "date", "robot_type",
                                "upload_id", "status"])
    indexed = table.to_pylist() if table is not None else []
    reports = read_table(lake, cleaned.TABLES["report"], columns=["upload_id"]) if indexed else None
    reported = set(reports["upload_id"].to_pylist()) if reports is not None else set()
    return Progress(indexed, raw.indexed_versions(lake), reported)


def undone(lake: Store, assignments: list[raw.Assignment], through: str) -> list[raw.Assignment]:
    """The assignments whose files still need a run through `through` (raw or cleaned)."""
    progress = read_progress(lake)
    return [a for a in assignments if not progress.done(a, through)]


def pending_partitions(landing: Store, lake: Store,
                       through: str) -> tuple[list[tuple[str, str]], int]:
    """Partitions holding landing files not indexed yet, (through cleaned or later) uploads
    the cleaned layer has not reported on, or (through features) aligned frames without
    current corner-case scores; and how many recordings the landing zone holds."""
    from robolake.datasets.scenarios import stale_corner_case_partitions

    files = raw.list_landing(landing)
    assignments = raw.assign_partitions(landing, lake, files)
    progress = read_progress(lake)
    pending = {a.partition for a in assignments if not progress.done(a, "raw")}
    if through != "raw":
        pending |= progress.unreported()
    if through == "features":
        pending |= stale_corner_case_partitions(lake)
    return sorted(pending), len(files)


def first_lake_date(lake: Store) -> str | None:
    """The earliest partition date the lake holds (landing files seen or uploads indexed),
    None for an empty lake."""
    dates = []
    for key in (raw.LANDING_INDEX, raw.RAW_UPLOADS):
        table = read_table(lake, key, columns=["date"])
        if table is not None and table.num_rows:
            dates.append(min(d for d in table["date"].to_pylist() if d))
    return min(dates) if dates else None
