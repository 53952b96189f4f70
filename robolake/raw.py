"""The raw layer: find uploads in the landing zone, validate, score, copy, index.

`raw/uploads` (Delta) is append-only: one row per (upload_id, landing_key) per
partition, where `upload_id` is the sha256 of the file's bytes. Accepted files
are copied content-addressed under `raw/files/date=…/robot_type=…/region=…/`;
files that cannot be used are copied under `raw/quarantine/…` with their
reasons. The landing zone is never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from robolake import recordings as rec
from robolake.contract import (
    ACCEPT_ABOVE,
    MAX_DUPLICATE_RATE,
    MAX_GAP_NS,
    QUARANTINE_BELOW,
    STATUSES,
    USABLE_STATUSES,
)
from robolake.storage import Store
from robolake.tables import append_rows, read_table

RAW_UPLOADS = "raw/uploads"
LANDING_INDEX = "raw/landing_index"
UNIDENTIFIED = "unidentified"
SIDECAR_SUFFIX = ".meta.json"
# uploads in progress and notes beside recordings (sidecars are read with their recording)
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".json", ".md", ".txt")
IDENTITY_FIELDS = ("robot_id", "robot_type", "region")
FUTURE_TOLERANCE_NS = 5 * 60 * 10**9  # recorder clocks may run a little ahead
EARLIEST_PLAUSIBLE_NS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1e9)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


def partitions_start() -> str:
    """First date of the daily partitions (real recordings in tests date from 2015)."""
    return os.environ.get("ROBOLAKE_PARTITIONS_START", "2015-01-01")


UPLOADS_SCHEMA = pa.schema([
    ("upload_id", pa.string()),
    ("landing_key", pa.string()),
    ("file_name", pa.string()),
    ("format", pa.string()),
    ("robot_id", pa.string()),
    ("robot_type", pa.string()),
    ("region", pa.string()),
    ("identity_source", pa.string()),
    ("date", pa.string()),
    ("start_ns", pa.int64()),
    ("end_ns", pa.int64()),
    ("duration_s", pa.float64()),
    ("message_count", pa.int64()),
    ("topics", pa.list_(pa.struct([
        ("topic", pa.string()), ("msgtype", pa.string()), ("sensor", pa.string()),
        ("count", pa.int64()), ("max_gap_ns", pa.int64()),
    ]))),
    ("size_bytes", pa.int64()),
    ("arrived_ns", pa.int64()),
    ("ingested_ns", pa.int64()),
    ("quality_score", pa.float64()),
    ("status", pa.string()),
    ("reasons", pa.list_(pa.string())),
    ("raw_key", pa.string()),
])
UPLOADS_PARTITION_BY = ["date", "robot_type"]

LANDING_INDEX_SCHEMA = pa.schema([
    ("landing_key", pa.string()),
    ("version", pa.string()),
    ("format", pa.string()),
    ("date", pa.string()),
    ("robot_type", pa.string()),
    ("probed_ns", pa.int64()),
])


def utc_date(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d")


def utc_iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- landing


@dataclass(frozen=True)
class LandingFile:
    key: str
    size: int
    mtime_ns: int
    sidecar_key: str | None = None
    sidecar_mtime_ns: int = 0

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        """Changes when the file or its sidecar changes (a sidecar may arrive later)."""
        return f"{self.size}:{self.mtime_ns}:{self.sidecar_mtime_ns}"


@dataclass(frozen=True)
class Assignment:
    file: LandingFile
    format: str | None
    date: str
    robot_type: str

    @property
    def partition(self) -> tuple[str, str]:
        return self.date, self.robot_type


def list_landing(landing: Store) -> list[LandingFile]:
    """Recordings in the landing zone with their sidecars; temp and hidden files skipped."""
    objects = {}
    for obj in landing.list():
        name = obj.key.rsplit("/", 1)[-1]
        if name.startswith(".") or (name.endswith(IGNORED_SUFFIXES)
                                    and not name.endswith(SIDECAR_SUFFIX)):
            continue
        objects[obj.key] = obj
    files = []
    for key, obj in sorted(objects.items()):
        if key.endswith(SIDECAR_SUFFIX):
            continue
        sidecar = objects.get(key + SIDECAR_SUFFIX)
        files.append(LandingFile(key, obj.size, obj.mtime_ns,
                                 sidecar.key if sidecar else None,
                                 sidecar.mtime_ns if sidecar else 0))
    return files


@dataclass
class Identity:
    values: dict[str, str] | None
    source: str | None
    problem: str | None  # why there is no usable identity


def resolve_identity(file: LandingFile, embedded: dict[str, str] | None,
                     landing: Store) -> Identity:
    """MCAP 'robot' record, else the sidecar, else upload metadata (S3 object metadata)."""
    candidates: list[tuple[str, dict[str, str]]] = []
    if embedded:
        candidates.append(("mcap_metadata", embedded))
    if file.sidecar_key:
        try:
            candidates.append(("sidecar", rec.read_sidecar(landing.read_bytes(file.sidecar_key),
                                                           file.sidecar_key)))
        except ValueError as exc:
            return Identity(None, "sidecar", str(exc))
    head = getattr(landing, "head_metadata", None)
    if not candidates and head is not None:
        meta = {k.replace("-", "_"): v for k, v in head(file.key).items()}
        if any(f in meta for f in IDENTITY_FIELDS):
            candidates.append(("upload_metadata", meta))
    if not candidates:
        return Identity(None, None, (
            f"no robot identity: {file.name} has no MCAP metadata record 'robot', no sidecar "
            f"{file.name}{SIDECAR_SUFFIX} and no upload metadata; expected robot_id, robot_type "
            "and region"))
    source, values = candidates[0]
    where = {"mcap_metadata": "MCAP metadata record 'robot'",
             "sidecar": file.name + SIDECAR_SUFFIX,
             "upload_metadata": "upload metadata"}[source]
    missing = [f for f in IDENTITY_FIELDS if not values.get(f)]
    if missing:
        return Identity(None, source, (
            f"incomplete robot identity in {where}: missing {', '.join(missing)} "
            "(expected robot_id, robot_type, region)"))
    for f in ("robot_type", "region"):
        if not _NAME_RE.match(values[f]):
            return Identity(None, source, (
                f"invalid robot identity in {where}: {f}={values[f]!r}; expected lowercase "
                "letters, digits, '_' or '-' (it names a partition)"))
    return Identity({f: values[f] for f in IDENTITY_FIELDS}, source, None)


def partition_for(identity: Identity, start_ns: int | None, arrived_ns: int,
                  now_ns: int) -> tuple[str, str]:
    """A recording belongs to its start date and robot type.

    Files without a usable start time or identity go to their arrival date and
    the `unidentified` robot type, where they are quarantined with the reason.
    """
    robot_type = identity.values["robot_type"] if identity.values else UNIDENTIFIED
    day = None
    if start_ns is not None and EARLIEST_PLAUSIBLE_NS <= start_ns <= now_ns + FUTURE_TOLERANCE_NS:
        day = utc_date(start_ns)
        if day < partitions_start():
            day = None
    return (day or utc_date(arrived_ns)), robot_type


def assign_partitions(landing: Store, lake: Store | None, files: Iterable[LandingFile],
                      now_ns: int | None = None) -> list[Assignment]:
    """The partition of each landing file, probing only files not seen before.

    Probe results are cached in the Delta table `raw/landing_index`, keyed by
    the file's key and version, so a sensor tick or a partition run reads only
    the headers of new or changed files.
    """
    now_ns = now_ns or time.time_ns()
    cache: dict[tuple[str, str], tuple[str | None, str, str]] = {}
    if lake is not None:
        index = read_table(lake, LANDING_INDEX, columns=["landing_key", "version", "format",
                                                         "date", "robot_type"])
        if index is not None:
            for row in index.to_pylist():
                cache[(row["landing_key"], row["version"])] = (
                    row["format"], row["date"], row["robot_type"])
    out: list[Assignment] = []
    new_rows = []
    for f in files:
        hit = cache.get((f.key, f.version))
        if hit is None:
            with landing.local_path(f.key) as path:
                fmt, embedded, start = rec.probe_recording(path)
            identity = resolve_identity(f, embedded, landing)
            day, robot_type = partition_for(identity, start, f.mtime_ns, now_ns)
            hit = (fmt, day, robot_type)
            new_rows.append({"landing_key": f.key, "version": f.version, "format": fmt,
                             "date": day, "robot_type": robot_type, "probed_ns": now_ns})
        out.append(Assignment(f, hit[0], hit[1], hit[2]))
    if lake is not None and new_rows:
        append_rows(lake, LANDING_INDEX, new_rows, LANDING_INDEX_SCHEMA)
    return out


# --------------------------------------------------------------------------- validation


@dataclass
class Verdict:
    score: float
    status: str
    reasons: list[str]


def score_recording(info: rec.RecordingInfo | None, fatal: list[str], now_ns: int) -> Verdict:
    """Quality score 0-100 with the reasons for every point taken off.

    Fatal problems (unreadable, truncated, no identity, times in the future or
    outside the file's own range) score 0. Softer ones deduct points:
    duplicate messages, time going backwards, gaps over 1 s in a sensor
    topic, no sensor the lake decodes.
    """
    reasons = list(fatal)
    if info is not None:
        reasons += info.structural_errors
        if info.declared_counts is not None and not info.structural_errors:
            read = Counter()
            for t in info.topics:
                read[t.topic] += t.count
            diff = {t: (n, read.get(t, 0)) for t, n in info.declared_counts.items()
                    if read.get(t, 0) != n}
            if diff:
                topic, (want, got) = sorted(diff.items())[0]
                reasons.append(f"incomplete: the file's index declares {want} messages on "
                               f"{topic} but {got} were read")
        if info.start_ns is None:
            reasons.append("empty: the recording holds no messages")
        else:
            if info.end_ns > now_ns + FUTURE_TOLERANCE_NS:
                n_topics = sum(1 for t in info.topics if t.last_ns > now_ns + FUTURE_TOLERANCE_NS)
                reasons.append(
                    f"timestamps in the future: {n_topics} topic(s) reach {utc_iso(info.end_ns)}, "
                    f"after the ingest time {utc_iso(now_ns)}; the recorder clock is wrong")
            if info.start_ns < EARLIEST_PLAUSIBLE_NS:
                reasons.append(f"implausible timestamps: the recording starts "
                               f"{utc_iso(info.start_ns)}, before 2000; the recorder clock was "
                               "not set")
            elif utc_date(info.start_ns) < partitions_start():
                reasons.append(f"the recording starts {utc_date(info.start_ns)}, before the "
                               f"lake's first partition date {partitions_start()} "
                               "(ROBOLAKE_PARTITIONS_START)")
            lo, hi = info.declared_start_ns, info.declared_end_ns
            if lo is not None and hi is not None and (info.start_ns < lo or info.end_ns > hi):
                reasons.append(
                    f"timestamps outside the recording's own time range: messages span "
                    f"{info.start_ns}..{info.end_ns} ns but the file declares {lo}..{hi} ns")
    if reasons:
        return Verdict(0.0, "quarantined", reasons)

    score = 100.0
    total = max(info.message_count, 1)
    dups = sum(t.duplicate_stamps for t in info.topics)
    if dups:
        rate = dups / total
        # above the contract's 0.1 % duplicate rate the upload is at least flagged
        if rate > MAX_DUPLICATE_RATE:
            penalty = 10.0 + 1000.0 * (rate - MAX_DUPLICATE_RATE)
        else:
            penalty = 1000.0 * rate
        score -= min(30.0, penalty)
        worst = max(info.topics, key=lambda t: t.duplicate_stamps)
        reasons.append(f"{dups} duplicate messages ({100 * rate:.2f} %, same topic and log "
                       f"time), most on {worst.topic}")
    backwards = [t for t in info.topics if t.backwards_steps]
    if backwards:
        score -= min(30.0, 10.0 * len(backwards))
        reasons.append("log time goes backwards on " + ", ".join(
            f"{t.topic} ({t.backwards_steps}x)" for t in backwards))
    sensors = [t for t in info.topics if rec.sensor_kind(t.msgtype)]
    gappy = [t for t in sensors if t.count > 1 and t.max_gap_ns > MAX_GAP_NS
             and (t.count - 1) * MAX_GAP_NS > (t.last_ns - t.first_ns)]
    if gappy:
        score -= min(20.0, 5.0 * len(gappy))
        reasons.append("gaps over 1 s on " + ", ".join(
            f"{t.topic} (max {t.max_gap_ns / 1e9:.1f} s)" for t in gappy))
    if not sensors:
        score -= 15.0
        reasons.append("no sensor topics the lake decodes (Imu, NavSatFix, PointCloud2/LaserScan,"
                       " CompressedImage/Image); indexed only")
    score = max(score, 0.0)
    if score > ACCEPT_ABOVE:
        status = "accepted"
    elif score >= QUARANTINE_BELOW:
        status = "flagged"
    else:
        status = "quarantined"
    return Verdict(round(score, 2), status, reasons)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def raw_file_key(row: dict) -> str:
    ext = rec.FORMAT_EXTENSIONS.get(row["format"] or "", "")
    return (f"raw/files/date={row['date']}/robot_type={row['robot_type']}/"
            f"region={row['region']}/{row['upload_id']}{ext}")


def quarantine_key(row: dict) -> str:
    return (f"raw/quarantine/date={row['date']}/robot_type={row['robot_type']}/"
            f"{row['upload_id']}/{row['file_name']}")


def validate_upload(path: Path, upload_id: str, assignment: Assignment, landing: Store,
                    now_ns: int) -> dict:
    """The raw/uploads row for one landing file (without its raw_key)."""
    f = assignment.file
    fatal: list[str] = []
    info: rec.RecordingInfo | None = None
    try:
        info = rec.inspect_recording(path)
    except rec.RecordingError as exc:
        fatal.append(str(exc))
    identity = resolve_identity(f, info.identity if info else None, landing)
    if identity.problem and not fatal:
        fatal.append(identity.problem)
    verdict = score_recording(info, fatal, now_ns)
    # every reason names the file, so it reads on its own in logs and quarantine notes
    reasons = [r if r.startswith(f.name) else f"{f.name}: {r}" for r in verdict.reasons]
    ids = identity.values or {}
    topics = [] if info is None else [
        {"topic": t.topic, "msgtype": t.msgtype, "sensor": rec.sensor_kind(t.msgtype),
         "count": t.count, "max_gap_ns": t.max_gap_ns} for t in info.topics]
    start = info.start_ns if info else None
    end = info.end_ns if info else None
    return {
        "upload_id": upload_id,
        "landing_key": f.key,
        "file_name": f.name,
        "format": info.format if info else rec.detect_format(rec.read_head(path)),
        "robot_id": ids.get("robot_id"),
        "robot_type": assignment.robot_type,
        "region": ids.get("region"),
        "identity_source": identity.source,
        "date": assignment.date,
        "start_ns": start,
        "end_ns": end,
        "duration_s": (end - start) / 1e9 if start is not None else None,
        "message_count": info.message_count if info else 0,
        "topics": topics,
        "size_bytes": f.size,
        "arrived_ns": f.mtime_ns,
        "ingested_ns": now_ns,
        "quality_score": verdict.score,
        "status": verdict.status,
        "reasons": reasons,
        "raw_key": None,
    }


# --------------------------------------------------------------------------- ingest


@dataclass
class IngestResult:
    date: str
    robot_type: str
    new_rows: list[dict]
    skipped: int  # already in raw/uploads: re-runs are no-ops
    table_version: int | None

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(r["status"] for r in self.new_rows)
        return {s: c.get(s, 0) for s in STATUSES}


def ingest_partition(landing: Store, lake: Store, day: str, robot_type: str,
                     now_ns: int | None = None,
                     log: Callable[[str], None] = lambda _msg: None) -> IngestResult:
    """Validate, copy and index every landing file of one (date, robot_type) partition.

    Idempotent: files already indexed in the partition (same key, size and
    arrival time) are skipped. Files are copied before the table commit, so an
    interrupted run leaves at worst an unreferenced copy that the re-run
    overwrites with the same bytes.
    """
    now_ns = now_ns or time.time_ns()
    assignments = [a for a in assign_partitions(landing, lake, list_landing(landing), now_ns)
                   if a.partition == (day, robot_type)]
    existing = read_table(lake, RAW_UPLOADS,
                          columns=["upload_id", "landing_key", "size_bytes", "arrived_ns",
                                   "status", "raw_key", "date", "robot_type"])
    seen_here: set[tuple[str, int, int]] = set()
    content_here: set[tuple[str, str]] = set()
    stored: dict[str, str] = {}  # upload_id -> raw_key of an accepted/flagged copy
    if existing is not None:
        for r in existing.to_pylist():
            if (r["date"], r["robot_type"]) == (day, robot_type):
                seen_here.add((r["landing_key"], r["size_bytes"], r["arrived_ns"]))
                content_here.add((r["upload_id"], r["landing_key"]))
            if r["status"] in USABLE_STATUSES:
                stored.setdefault(r["upload_id"], r["raw_key"])
    todo = [a for a in assignments
            if (a.file.key, a.file.size, a.file.mtime_ns) not in seen_here]
    rows = []
    for i, a in enumerate(todo, 1):
        with landing.local_path(a.file.key) as path:
            upload_id = sha256_file(path)
            if (upload_id, a.file.key) in content_here:  # same bytes re-landed: nothing new
                log(f"[{i}/{len(todo)}] {a.file.key}: already indexed")
                continue
            row = validate_upload(path, upload_id, a, landing, now_ns)
            if row["status"] in USABLE_STATUSES and row["upload_id"] in stored:
                row["status"] = "duplicate"
                row["reasons"] = row["reasons"] + [
                    f"same bytes as an upload already in the lake ({stored[row['upload_id']]})"]
                row["raw_key"] = stored[row["upload_id"]]
            elif row["status"] in USABLE_STATUSES:
                row["raw_key"] = raw_file_key(row)
                lake.put_file(path, row["raw_key"])
                stored[row["upload_id"]] = row["raw_key"]
            else:
                row["raw_key"] = quarantine_key(row)
                lake.put_file(path, row["raw_key"])
                lake.write_bytes(row["raw_key"] + ".reasons.json", json.dumps(
                    {"landing_key": row["landing_key"], "reasons": row["reasons"]},
                    indent=2).encode())
        rows.append(row)
        log(f"[{i}/{len(todo)}] {a.file.key}: {row['status']} (score {row['quality_score']:.0f})"
            + (f" - {row['reasons'][0]}" if row["reasons"] else ""))
    version = append_rows(lake, RAW_UPLOADS, rows, UPLOADS_SCHEMA,
                          partition_by=UPLOADS_PARTITION_BY) if rows else None
    return IngestResult(day, robot_type, rows, len(assignments) - len(rows), version)


def ingest_landing(landing: Store, lake: Store, now_ns: int | None = None,
                   log: Callable[[str], None] = lambda _msg: None,
                   ) -> dict[tuple[str, str], IngestResult]:
    """Ingest every partition the landing zone has files for, one after the other
    (the raw layer without Dagster: notebooks, benchmarks, tests)."""
    parts = sorted({a.partition for a in
                    assign_partitions(landing, lake, list_landing(landing), now_ns)})
    return {p: ingest_partition(landing, lake, *p, now_ns=now_ns, log=log) for p in parts}
