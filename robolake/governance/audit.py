"""The audit log: an append-only, hash-chained Delta table `ops/audit`.

Every entry says who (API key and role, Dagster run id, or OS user), did what (read,
write, erase, purge, promote) to which table (its version, partition and files), when
and from where. Entry `seq` n carries `prev_hash`, the hash of entry n-1, and its own
`hash` over all its fields; `verify` recomputes the chain and names the first entry
that does not fit, so an edited, removed or inserted entry is found.

Concurrent writers cannot fork the chain: an append is a keyed commit
(robolake.tables.commit_keyed) decided on the latest snapshot's tail and committed against
exactly that version; a writer that lost the race re-reads the new tail and chains after
it. The tail (last seq and hash) is stored in each audit commit's metadata, so finding it
reads one log entry, not the whole table.

Lake writes are recorded by robolake.tables after each Delta commit (every layer, once);
the gateway records every API call (robolake.gateway.audit_middleware); erase and model
promotion record themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import polars as pl
import pyarrow as pa

from robolake.storage import Store

AUDIT = "ops/audit"
GENESIS = "0" * 64
TAIL_KEY = "robolake.audit_tail"  # commit metadata: {"seq": n, "hash": …}
ACTIONS = ("read", "write", "erase", "purge", "promote", "approve")
AUDIT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("entry_id", pa.string()), ("ts_ns", pa.int64()),
    ("date", pa.string()), ("actor", pa.string()), ("role", pa.string()),
    ("action", pa.string()), ("target", pa.string()), ("version", pa.int64()),
    ("partition", pa.string()), ("files", pa.list_(pa.string())), ("origin", pa.string()),
    ("outcome", pa.string()), ("details", pa.string()), ("prev_hash", pa.string()),
    ("hash", pa.string()),
])
_HASHED = [n for n in AUDIT_SCHEMA.names if n != "hash"]
_POLARS_SCHEMA = {f.name: pl.Int64 if pa.types.is_integer(f.type) else
                  pl.List(pl.String) if pa.types.is_list(f.type) else pl.String
                  for f in AUDIT_SCHEMA}


@dataclass(frozen=True)
class Actor:
    """Who is acting: an API key (key id, role), a Dagster run (run id, "run"), a user."""

    name: str
    role: str
    partition: str = ""
    origin: str = ""


@dataclass(frozen=True)
class Entry:
    action: str
    target: str
    version: int | None = None
    partition: str = ""
    files: Sequence[str] = ()
    outcome: str = "ok"
    details: dict = field(default_factory=dict)
    actor: Actor | None = None  # None: the current actor (see acting_as)


def enabled() -> bool:
    """Lake writes are audited unless ROBOLAKE_AUDIT=off (benchmarks of raw write speed)."""
    return os.environ.get("ROBOLAKE_AUDIT", "on").lower() not in ("off", "0", "false", "no")


def _process_origin() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_actor() -> Actor:
    """ROBOLAKE_AUDIT_ACTOR (e.g. a scheduler's service name), else the OS user."""
    name = os.environ.get("ROBOLAKE_AUDIT_ACTOR")
    if name:
        return Actor(name, "service")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(f"user:{user}", "cli")


_current: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("audit_actor",
                                                                       default=None)


def current_actor() -> Actor:
    return _current.get() or default_actor()


@contextlib.contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    """Attribute what this context (thread or task) writes to `actor`."""
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def entry_hash(row: dict) -> str:
    payload = json.dumps([row[n] for n in _HASHED], separators=(",", ":"), sort_keys=True,
                         default=list)
    return hashlib.sha256(payload.encode()).hexdigest()


def _row(e: Entry, seq: int, prev: str, now_ns: int) -> dict:
    who = e.actor or current_actor()
    row = {"seq": seq, "entry_id": uuid.uuid4().hex, "ts_ns": now_ns,
           "date": datetime.fromtimestamp(now_ns / 1e9, UTC).strftime("%Y-%m-%d"),
           "actor": who.name, "role": who.role, "action": e.action, "target": e.target,
           "version": e.version, "partition": e.partition or who.partition,
           "files": list(e.files), "origin": who.origin or _process_origin(),
           "outcome": e.outcome, "details": json.dumps(e.details, sort_keys=True),
           "prev_hash": prev}
    row["hash"] = entry_hash(row)
    return row


# --------------------------------------------------------------------------- the chain


def commit_log(lake: Store, key: str, version: int) -> list[dict]:
    """The actions of one Delta commit (its `_delta_log` JSON), [] if it is gone."""
    path = f"{key}/_delta_log/{version:020d}.json"
    if not lake.exists(path):
        return []
    return [json.loads(line) for line in lake.read_bytes(path).decode().splitlines()
            if line.strip()]


TAIL_LOOKBACK = 20  # commits without a tail (compaction, vacuum) to look through


def _tail(snap) -> tuple[int, str]:
    """(last seq, its hash) of a snapshot of ops/audit; (-1, GENESIS) when empty."""
    if snap.table is None:
        return -1, GENESIS
    for v in range(snap.version, max(snap.version - TAIL_LOOKBACK, -1), -1):
        for action in commit_log(snap.lake, AUDIT, v):
            tail = action.get("commitInfo", {}).get(TAIL_KEY)
            if tail:
                found = json.loads(tail)
                return int(found["seq"]), str(found["hash"])
    last = snap.read(["seq", "hash"]).sort("seq").tail(1)  # log cleaned up: read the rows
    return (int(last["seq"][0]), str(last["hash"][0])) if last.height else (-1, GENESIS)


def append(lake: Store, entries: Sequence[Entry]) -> int:
    """Chain the entries after the current tail in one commit (retried against the new
    tail when another writer appended first); returns the audit table's new version."""
    from robolake.tables import Write, commit_keyed

    if not entries:
        raise ValueError("audit.append: no entries")

    def plan(snap) -> Write:
        seq, prev = _tail(snap)
        rows, now = [], time.time_ns()
        for e in entries:
            if e.action not in ACTIONS:
                raise ValueError(f"audit entry action {e.action!r}: expected one of {ACTIONS}")
            seq += 1
            rows.append(_row(e, seq, prev, now))
            prev = rows[-1]["hash"]
        tail = json.dumps({"seq": seq, "hash": prev})
        # through polars: pyarrow's own conversion of Python rows imports pandas (0.4 s)
        table = pl.DataFrame(rows, schema=_POLARS_SCHEMA).to_arrow().cast(AUDIT_SCHEMA)
        return Write(table, metadata={TAIL_KEY: tail})

    version = commit_keyed(lake, AUDIT, plan, partition_by=["date"])
    assert version is not None
    return version


def record(lake: Store, action: str, target: str, **fields) -> int:
    """Append one entry (see Entry for the fields)."""
    return append(lake, [Entry(action, target, **fields)])


def record_commit(lake: Store, key: str, version: int) -> None:
    """Audit one Delta commit of a table: the files it added and removed, by whom."""
    added, removed, operation = [], [], ""
    for action in commit_log(lake, key, version):
        if "add" in action:
            added.append(action["add"]["path"])
        elif "remove" in action:
            removed.append(action["remove"]["path"])
        elif "commitInfo" in action:
            operation = action["commitInfo"].get("operation", "")
    files = [f"+{p}" for p in added] + [f"-{p}" for p in removed]
    # a store handed out by a Dagster run's lake resource names the run (robolake_resources)
    record(lake, "write", key, version=version, files=files,
           actor=getattr(lake, "audit_actor", None),
           details={"operation": operation, "added": len(added), "removed": len(removed)})


# --------------------------------------------------------------------------- verify


@dataclass
class Verdict:
    entries: int
    broken_seq: int | None = None
    broken_entry: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


def _first_break(rows: list[dict]) -> tuple[int, dict, str] | None:
    prev = GENESIS
    for i, row in enumerate(rows):
        if row["seq"] != i:
            what = "is missing" if row["seq"] > i else "appears twice"
            return i, row, f"entry {i} {what} (found seq {row['seq']} at position {i})"
        if row["prev_hash"] != prev:
            return i, row, (f"prev_hash {row['prev_hash'][:12]}… is not the hash of entry "
                            f"{i - 1} ({prev[:12]}…): an entry before it was changed or removed")
        if entry_hash(row) != row["hash"]:
            return i, row, "its contents do not match its hash: the entry was edited"
        prev = row["hash"]
    return None


def verify(lake: Store) -> Verdict:
    """Recompute the chain; the verdict names the first entry that does not fit."""
    from robolake.tables import Snapshot, open_table

    table = open_table(lake, AUDIT)
    if table is None:
        return Verdict(0)
    snap = Snapshot(lake, AUDIT, table)
    frame = snap.read(AUDIT_SCHEMA.names).sort("seq")
    rows = frame.with_columns(pl.col("files").fill_null([])).to_dicts()
    broken = _first_break(rows)
    if broken is not None:
        i, row, reason = broken
        return Verdict(len(rows), i, row["entry_id"], reason)
    seq, tail = _tail(snap)
    if rows and (seq, tail) != (rows[-1]["seq"], rows[-1]["hash"]):
        return Verdict(len(rows), len(rows), None, f"the log's last commit names entry {seq} "
                       f"({tail[:12]}…) but the table ends at entry {rows[-1]['seq']}: "
                       "entries after it were removed")
    return Verdict(len(rows))
