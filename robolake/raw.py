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
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from robolake import recordings as rec
from robolake.contract import (
    ACCEPT_ABOVE,
    ACCEPTED,
    DUPLICATE,
    FLAGGED,
    MAX_DUPLICATE_RATE,
    MAX_GAP_NS,
    QUARANTINE_BELOW,
    QUARANTINED,
    STATUSES,
    USABLE_STATUSES,
)
from robolake.errors import is_transient
from robolake.settings import get_settings
from robolake.storage import Store
from robolake.tables import Snapshot, Write, append_new_rows, commit_keyed, read_table, replace_rows

RAW_UPLOADS = "raw/uploads"
LANDING_INDEX = "raw/landing_index"
UNIDENTIFIED = "unidentified"
SIDECAR_SUFFIX = ".meta.json"
# uploads in progress and notes beside recordings (sidecars are read with their recording)
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".json", ".md", ".txt")
IDENTITY_FIELDS = ("robot_id", "robot_type", "region")
WARNING_PENALTY = 10.0  # a usable file read with less trust (see RecordingInfo.warnings)
FUTURE_TOLERANCE_NS = 5 * 60 * 10**9  # recorder clocks may run a little ahead
EARLIEST_PLAUSIBLE_NS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1e9)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


def partitions_start() -> str:
    """First date of the daily partitions (ROBOLAKE_PARTITIONS_START, robolake/settings.py)."""
    return get_settings().partitions_start


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
    # sha256 of the recording's topics, message counts and time ranges: equal for a
    # re-export or format conversion of the same messages (then compared on values)
    ("messages_digest", pa.string()),
])
UPLOADS_PARTITION_BY = ["date", "robot_type"]

LANDING_INDEX_SCHEMA = pa.schema([
    ("landing_key", pa.string()),
    ("version", pa.string()),
    ("format", pa.string()),
    ("date", pa.string()),
    ("robot_type", pa.string()),
    ("probed_ns", pa.int64()),
    ("upload_id", pa.string()),  # set once the file's bytes are indexed in raw/uploads
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
    is_symlink: bool = False

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
    indexed_as: str | None = None  # upload_id, once this version's bytes are in raw/uploads

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
        if sidecar is not None and sidecar.is_symlink:
            sidecar = None  # an identity must come from the upload, not from a linked file
        files.append(LandingFile(key, obj.size, obj.mtime_ns,
                                 sidecar.key if sidecar else None,
                                 sidecar.mtime_ns if sidecar else 0,
                                 is_symlink=obj.is_symlink))
    return files


@dataclass
class Identity:
    values: dict[str, str] | None
    source: str | None
    problem: str | None  # why there is no usable identity


MAX_ROBOT_ID_CHARS = 128
# control, format (bidi overrides, zero-width), line/paragraph separators, unassigned
_UNPRINTABLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def printable(text: str) -> str:
    """`text` with control and formatting characters escaped (\\n, \\u202e ...), so a file
    name or an identity value can never forge a log line or reorder what a terminal shows."""
    return "".join(ch.encode("unicode_escape").decode() if unicodedata.category(ch)
                   in _UNPRINTABLE_CATEGORIES else ch for ch in text)


def _shown(value: object, limit: int = 40) -> str:
    """A user-supplied value as it may appear in a reason: printable, quoted when a string,
    cut to `limit` characters."""
    text = printable(repr(value))
    return text if len(text) <= limit else text[:limit] + f"... ({len(str(value))} chars)"


def identity_problem(values: dict[str, object], where: str) -> str | None:
    """Why these identity values cannot be used (None: they can), naming where they come
    from and the field."""
    missing = [f for f in IDENTITY_FIELDS if values.get(f) in (None, "")]
    if missing:
        return (f"incomplete robot identity in {where}: missing {', '.join(missing)} "
                "(expected robot_id, robot_type, region)")
    for f in IDENTITY_FIELDS:
        if not isinstance(values[f], str):
            return (f"invalid robot identity in {where}: {f} is a JSON "
                    f"{type(values[f]).__name__} ({_shown(values[f])}); expected a string")
    robot_id = values["robot_id"]
    bad = sorted({unicodedata.category(ch) for ch in robot_id} & _UNPRINTABLE_CATEGORIES)
    if bad or robot_id != robot_id.strip():
        return (f"invalid robot identity in {where}: robot_id={_shown(robot_id)} holds control, "
                "formatting (e.g. right-to-left override) or surrounding blank characters; "
                "expected printable text")
    if len(robot_id) > MAX_ROBOT_ID_CHARS:
        return (f"invalid robot identity in {where}: robot_id is {len(robot_id)} characters "
                f"long; expected at most {MAX_ROBOT_ID_CHARS}")
    for f in ("robot_type", "region"):
        if not _NAME_RE.match(values[f]):
            return (f"invalid robot identity in {where}: {f}={_shown(values[f])}; expected "
                    "lowercase letters, digits, '_' or '-', at most 63 (it names a partition)")
    if values["robot_type"] == UNIDENTIFIED:
        return (f"invalid robot identity in {where}: robot_type '{UNIDENTIFIED}' is reserved "
                "for files without an identity")
    return None


def read_sidecar(data: bytes, name: str) -> dict[str, object]:
    """A `<file>.meta.json` sidecar's JSON object (values as given: types are checked by
    `identity_problem`); errors name the file and what was expected."""
    try:
        parsed = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: not valid JSON ({exc}); expected an object with "
                         "robot_id, robot_type, region") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"{name}: expected a JSON object with robot_id, robot_type, region, "
                         f"got a JSON {type(parsed).__name__}")
    return parsed


def resolve_identity(file: LandingFile, embedded: dict[str, str] | None,
                     landing: Store) -> Identity:
    """MCAP 'robot' record, else the sidecar, else upload metadata (S3 object metadata).

    The sidecar or upload metadata is the uploader's word (the gateway writes the token's
    identity there): when the file's own record says otherwise, neither is believed.
    """
    sidecar_name = file.name + SIDECAR_SUFFIX
    candidates: list[tuple[str, str, dict[str, object]]] = []
    if embedded:
        candidates.append(("mcap_metadata", "MCAP metadata record 'robot'", embedded))
    if file.sidecar_key:
        try:
            values = read_sidecar(landing.read_bytes(file.sidecar_key), sidecar_name)
        except ValueError as exc:
            return Identity(None, "sidecar", str(exc))
        candidates.append(("sidecar", sidecar_name, values))
    head = getattr(landing, "head_metadata", None)
    if len(candidates) < 2 and head is not None and not file.sidecar_key:
        meta = {k.replace("-", "_"): v for k, v in head(file.key).items()}
        if any(f in meta for f in IDENTITY_FIELDS):
            candidates.append(("upload_metadata", "upload metadata", meta))
    conflict = _identity_conflict(candidates)
    if conflict:
        return Identity(None, candidates[0][0], conflict)
    if not candidates:
        return Identity(None, None, (
            f"no robot identity: {file.name} has no MCAP metadata record 'robot', no sidecar "
            f"{sidecar_name} and no upload metadata; expected robot_id, robot_type "
            "and region"))
    source, where, values = candidates[0]
    problem = identity_problem(values, where)
    if problem:
        return Identity(None, source, problem)
    return Identity({f: str(values[f]) for f in IDENTITY_FIELDS}, source, None)


def _identity_conflict(candidates: list[tuple[str, str, dict[str, object]]]) -> str | None:
    """The file's own identity against the uploader's, field by field."""
    if len(candidates) < 2 or candidates[0][0] != "mcap_metadata":
        return None
    (_, own_where, own), (given_source, given_where, given) = candidates[:2]
    if given_source == "sidecar":
        given_where = f"sidecar {given_where}"
    differ = [f for f in IDENTITY_FIELDS
              if f in own and f in given and str(own[f]) != str(given[f])]
    if not differ:
        return None
    f = differ[0]
    return (f"identity conflict: the {own_where} says {f} {_shown(own[f])} but the "
            f"{given_where} (the uploader's word) says {_shown(given[f])}; neither is "
            "trusted: re-upload with the robot's own credentials or fix the recorder's "
            "configuration")


def partition_for(identity: Identity, start_ns: int | None, arrived_ns: int,
                  now_ns: int) -> tuple[str, str]:
    """A recording belongs to its start date and robot type.

    Files without a usable identity go to the `unidentified` robot type; files
    without a usable start time (unreadable, empty, implausible clock) to their
    arrival date. Either way they are quarantined there with the reason.
    """
    robot_type = identity.values["robot_type"] if identity.values else UNIDENTIFIED
    day = None
    if start_ns is not None and EARLIEST_PLAUSIBLE_NS <= start_ns <= now_ns + FUTURE_TOLERANCE_NS:
        day = utc_date(start_ns)
        if day < partitions_start():
            day = None
    return (day or utc_date(arrived_ns)), robot_type


def probe_partition(landing: Store, f: LandingFile, now_ns: int) -> tuple[str | None, str, str]:
    """(format, date, robot_type) of a landing file from its header and identity.

    Never raises for a bad file: what cannot be probed goes to its arrival date and
    the `unidentified` robot type, where its full validation gives the reason.
    """
    if f.is_symlink:
        return None, utc_date(f.mtime_ns), UNIDENTIFIED
    try:
        with landing.local_path(f.key) as path:
            fmt, embedded, start = rec.probe_recording(path)
        identity = resolve_identity(f, embedded, landing)
    except Exception as exc:  # noqa: BLE001 - the verdict comes with validation
        if is_transient(exc):
            raise
        return None, utc_date(f.mtime_ns), UNIDENTIFIED
    return (fmt, *partition_for(identity, start, f.mtime_ns, now_ns))


def assign_partitions(landing: Store, lake: Store | None, files: Iterable[LandingFile],
                      now_ns: int | None = None) -> list[Assignment]:
    """The partition of each landing file, probing only files not seen before.

    Probe results are cached in the Delta table `raw/landing_index`, keyed by
    the file's key and version (each once, whoever probes at the same time), so
    a sensor tick or a partition run reads only the headers of new or changed
    files.
    """
    now_ns = now_ns or time.time_ns()
    cache = {(r["landing_key"], r["version"]): (r["format"], r["date"], r["robot_type"],
                                                r["upload_id"])
             for r in _landing_index(lake)}
    out: list[Assignment] = []
    new_rows = []
    for f in files:
        hit = cache.get((f.key, f.version))
        if hit is None:
            hit = (*probe_partition(landing, f, now_ns), None)
            new_rows.append({"landing_key": f.key, "version": f.version, "format": hit[0],
                             "date": hit[1], "robot_type": hit[2], "probed_ns": now_ns,
                             "upload_id": None})
        out.append(Assignment(f, *hit))
    if lake is not None and new_rows:
        append_new_rows(lake, LANDING_INDEX, new_rows, LANDING_INDEX_SCHEMA,
                        keys=("landing_key", "version"))
    return out


def _landing_index(lake: Store | None) -> list[dict]:
    if lake is None:
        return []
    table = read_table(lake, LANDING_INDEX, columns=["landing_key", "version", "format", "date",
                                                      "robot_type", "upload_id"])
    return table.to_pylist() if table is not None else []


def indexed_versions(lake: Store) -> set[tuple[str, str]]:
    """(landing_key, version) of every landing file whose bytes are in raw/uploads: a
    touched but unchanged file is recognised once, then counts as done."""
    return {(r["landing_key"], r["version"]) for r in _landing_index(lake) if r["upload_id"]}


def mark_indexed(lake: Store, marks: dict[tuple[str, str], str]) -> None:
    """Record which upload each (landing_key, version) turned out to be, in one keyed
    commit that rewrites those keys' rows of raw/landing_index."""
    if not marks:
        return
    keys = sorted({k for k, _ in marks})

    def rows(snap: Snapshot) -> pa.Table:
        current = snap.read(LANDING_INDEX_SCHEMA.names, filters={"landing_key": keys})
        out: dict[tuple[str, str], dict] = {}
        for r in current.iter_rows(named=True):
            r["upload_id"] = marks.get((r["landing_key"], r["version"]), r["upload_id"])
            out.setdefault((r["landing_key"], r["version"]), r)  # drops duplicate rows too
        return pa.Table.from_pylist(list(out.values()), schema=LANDING_INDEX_SCHEMA)

    replace_rows(lake, LANDING_INDEX, rows, "landing_key", keys)


# --------------------------------------------------------------------------- validation


@dataclass
class Verdict:
    score: float
    status: str
    reasons: list[str]


def score_recording(info: rec.RecordingInfo | None, fatal: list[str], now_ns: int) -> Verdict:
    """Quality score 0-100 with the reasons for every point taken off.

    Fatal problems (unreadable, truncated, corrupt, no identity, times in the future or
    outside the file's own range) score 0. Softer ones deduct points: duplicate
    messages, time going backwards, integrity not verifiable or an index rebuilt by
    scanning, gaps over 1 s in a sensor topic, no sensor the lake decodes.
    """
    reasons = list(fatal) + (_fatal_problems(info, now_ns) if info is not None else [])
    if reasons:
        return Verdict(0.0, QUARANTINED, reasons)
    deductions = _deductions(info)
    score = max(100.0 - sum(points for points, _ in deductions), 0.0)
    if score > ACCEPT_ABOVE:
        status = ACCEPTED
    elif score >= QUARANTINE_BELOW:
        status = FLAGGED
    else:
        status = QUARANTINED
    return Verdict(round(score, 2), status, [reason for _, reason in deductions])


def _fatal_problems(info: rec.RecordingInfo, now_ns: int) -> list[str]:
    reasons = list(info.structural_errors)
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
        return reasons or ["empty: the recording holds no messages"]
    if info.end_ns > now_ns + FUTURE_TOLERANCE_NS:
        n_topics = sum(1 for t in info.topics if t.last_ns > now_ns + FUTURE_TOLERANCE_NS)
        reasons.append(
            f"timestamps in the future: {n_topics} topic(s) reach {utc_iso(info.end_ns)}, "
            f"after the ingest time {utc_iso(now_ns)}; the recorder clock is wrong")
    if info.start_ns < EARLIEST_PLAUSIBLE_NS:
        reasons.append(f"implausible timestamps: the recording starts "
                       f"{utc_iso(info.start_ns)}, before 2000; the recorder clock was not set")
    elif utc_date(info.start_ns) < partitions_start():
        reasons.append(f"the recording starts {utc_date(info.start_ns)}, before the "
                       f"lake's first partition date {partitions_start()} "
                       "(ROBOLAKE_PARTITIONS_START)")
    lo, hi = info.declared_start_ns, info.declared_end_ns
    if lo is not None and hi is not None and (info.start_ns < lo or info.end_ns > hi):
        reasons.append(
            f"timestamps outside the recording's own time range: messages span "
            f"{info.start_ns}..{info.end_ns} ns but the file declares {lo}..{hi} ns")
    return reasons


def _deductions(info: rec.RecordingInfo) -> list[tuple[float, str]]:
    out = []
    total = max(info.message_count, 1)
    dups = sum(t.duplicate_stamps for t in info.topics)
    if dups:
        rate = dups / total
        # above the contract's 0.1 % duplicate rate the upload is at least flagged
        if rate > MAX_DUPLICATE_RATE:
            penalty = 10.0 + 1000.0 * (rate - MAX_DUPLICATE_RATE)
        else:
            penalty = 1000.0 * rate
        worst = max(info.topics, key=lambda t: t.duplicate_stamps)
        out.append((min(30.0, penalty), f"{dups} duplicate messages ({100 * rate:.2f} %, same "
                                        f"topic and log time), most on {worst.topic}"))
    backwards = [t for t in info.topics if t.backwards_steps]
    if backwards:
        out.append((min(30.0, 10.0 * len(backwards)), "log time goes backwards on " + ", ".join(
            f"{t.topic} ({t.backwards_steps}x)" for t in backwards)))
    out += [(WARNING_PENALTY, warning) for warning in info.warnings]
    sensors = [t for t in info.topics if rec.sensor_kind(t.msgtype)]
    gappy = [t for t in sensors if t.count > 1 and t.max_gap_ns > MAX_GAP_NS
             and (t.count - 1) * MAX_GAP_NS > (t.last_ns - t.first_ns)]
    if gappy:
        out.append((min(20.0, 5.0 * len(gappy)), "gaps over 1 s on " + ", ".join(
            f"{t.topic} (max {t.max_gap_ns / 1e9:.1f} s)" for t in gappy)))
    if not sensors:
        types = sorted({t.msgtype for t in info.topics})
        out.append((15.0, f"no decoder for {', '.join(types[:5])}"
                          f"{' …' if len(types) > 5 else ''}: no sensor topic the lake decodes "
                          "(Imu, NavSatFix, PointCloud2/LaserScan, CompressedImage/Image); "
                          "indexed only"))
    return out


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def raw_file_key(row: dict) -> str:
    ext = rec.FORMAT_EXTENSIONS.get(row["format"] or "", "")
    return (f"raw/files/date={row['date']}/robot_type={row['robot_type']}/"
            f"region={row['region']}/{row['upload_id']}{ext}")


SAFE_NAME_CHARS = 100  # file names in the lake stay far below every filesystem's limit
_UNSAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._\-]")


def safe_file_name(name: str) -> str:
    """A name for a copy in the lake: the landing name where it is short and plain,
    else a cut, cleaned name with a hash of the original (kept in raw/uploads and in the
    reasons file)."""
    clean = _UNSAFE_NAME_RE.sub("_", name).lstrip(".") or "file"
    if clean == name and len(name) <= SAFE_NAME_CHARS:
        return name
    stem, dot, ext = clean.rpartition(".")
    if not (dot and stem and len(ext) <= 10):
        stem, ext = clean, ""
    ext = f".{ext}" if ext else ""
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{stem[:SAFE_NAME_CHARS - len(ext) - 17]}~{digest}{ext}"


def quarantine_key(row: dict) -> str:
    return (f"raw/quarantine/date={row['date']}/robot_type={row['robot_type']}/"
            f"{row['upload_id']}/{safe_file_name(row['file_name'])}")


def messages_digest(info: rec.RecordingInfo | None) -> str | None:
    """Topics, message types, counts and time ranges, hashed: a re-export or a format
    conversion of the same messages has the same digest (a cheap first test for content
    duplicates; the sensor values decide)."""
    if info is None or not info.message_count:
        return None
    summary = sorted((t.topic, t.msgtype, t.count, t.first_ns, t.last_ns)
                     for t in info.topics if t.count)
    return hashlib.sha256(json.dumps(summary).encode()).hexdigest()


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
    except Exception as exc:  # noqa: BLE001 - a reader bug on hostile bytes is this file's
        if is_transient(exc):
            raise
        fatal.append(f"unreadable: the reader failed ({type(exc).__name__}: {exc})")
    identity = resolve_identity(f, info.identity if info else None, landing)
    if identity.problem and not fatal:
        fatal.append(identity.problem)
    verdict = score_recording(info, fatal, now_ns)
    ids = identity.values or {}
    topics = [] if info is None else [
        {"topic": t.topic, "msgtype": t.msgtype, "sensor": rec.sensor_kind(t.msgtype),
         "count": t.count, "max_gap_ns": t.max_gap_ns} for t in info.topics]
    start = info.start_ns if info else None
    end = info.end_ns if info else None
    return {
        **_row_base(assignment, upload_id, now_ns),
        "format": info.format if info else rec.detect_format(rec.read_head(path)),
        "robot_id": ids.get("robot_id"),
        "region": ids.get("region"),
        "identity_source": identity.source,
        "start_ns": start,
        "end_ns": end,
        "duration_s": (end - start) / 1e9 if start is not None else None,
        "message_count": info.message_count if info else 0,
        "topics": topics,
        "quality_score": verdict.score,
        "status": verdict.status,
        "reasons": _named(f.name, verdict.reasons),
        "messages_digest": messages_digest(info) if verdict.status in USABLE_STATUSES else None,
    }


def _named(name: str, reasons: list[str]) -> list[str]:
    # every reason names the file, so it reads on its own in logs and quarantine notes
    name = printable(name)
    return [r if r.startswith(name) else f"{name}: {r}" for r in reasons]


def _row_base(a: Assignment, upload_id: str, now_ns: int) -> dict:
    return {"upload_id": upload_id, "landing_key": a.file.key, "file_name": a.file.name,
            "format": a.format, "robot_id": None, "robot_type": a.robot_type, "region": None,
            "identity_source": None, "date": a.date, "start_ns": None, "end_ns": None,
            "duration_s": None, "message_count": 0, "topics": [], "size_bytes": a.file.size,
            "arrived_ns": a.file.mtime_ns, "ingested_ns": now_ns, "quality_score": 0.0,
            "status": QUARANTINED, "reasons": [], "raw_key": None, "messages_digest": None}


def unread_row(a: Assignment, now_ns: int, reason: str) -> dict:
    """The verdict for a landing file whose bytes are not read (a link, an unreadable
    file): quarantined with the reason, nothing copied."""
    upload_id = hashlib.sha256(f"unread:{a.file.key}@{a.file.version}".encode()).hexdigest()
    return {**_row_base(a, upload_id, now_ns), "reasons": _named(a.file.name, [reason])}


# --------------------------------------------------------------------------- content duplicates


def sensor_values_digest(path: Path) -> str:
    """A digest of every decoded sensor value of a recording (payload references left
    out), independent of file format and message order in the file."""
    import polars as pl

    from robolake.decode import decode_recording

    decoded = decode_recording(path, "")
    h = hashlib.sha256()
    for kind in ("imu", "gps", "lidar", "camera"):
        cols = getattr(decoded, kind)
        if not cols:
            continue
        frame = pl.DataFrame(cols)
        frame = frame.sort(frame.columns)
        h.update(kind.encode())
        h.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()


class _ValueDigests:
    """Sensor value digests of uploads in the lake, computed once per run when needed."""

    def __init__(self, lake: Store):
        self.lake, self.cache = lake, {}

    def __call__(self, upload_id: str, raw_key: str) -> str | None:
        if upload_id not in self.cache:
            try:
                with self.lake.local_path(raw_key) as path:
                    self.cache[upload_id] = sensor_values_digest(path)
            except Exception as exc:  # noqa: BLE001 - undecodable: not a provable copy
                if is_transient(exc):
                    raise
                self.cache[upload_id] = None
        return self.cache[upload_id]


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


def _copy_into_lake(lake: Store, path: Path, row: dict, stored: dict[str, str]) -> None:
    """Copy a judged file: usable ones content-addressed under raw/files/ (unless the same
    bytes are already there), the rest under raw/quarantine/ beside their reasons."""
    try:
        if row["status"] in USABLE_STATUSES:
            row["raw_key"] = stored.get(row["upload_id"]) or raw_file_key(row)
            if row["upload_id"] not in stored:
                lake.put_file(path, row["raw_key"])
        else:
            row["raw_key"] = quarantine_key(row)
            lake.put_file(path, row["raw_key"])
            lake.write_bytes(row["raw_key"] + ".reasons.json", json.dumps(
                {"landing_key": row["landing_key"], "file_name": row["file_name"],
                 "reasons": row["reasons"]}, indent=2).encode())
    except Exception as exc:  # noqa: BLE001 - a copy that cannot be made is this file's verdict
        if is_transient(exc):
            raise
        row.update(status=QUARANTINED, raw_key=None, reasons=row["reasons"] + _named(
            row["file_name"], [f"could not be copied into the lake ({type(exc).__name__}: "
                               f"{printable(str(exc))})"]))


def judge_file(landing: Store, lake: Store, a: Assignment, now_ns: int,
               stored: dict[str, str]) -> dict:
    """The raw/uploads row of one landing file, its copy made. Never raises for a bad file
    (only for lost capacity or network, which a retry may cure)."""
    f = a.file
    if f.is_symlink:
        return unread_row(a, now_ns, "a symbolic link: links are not followed (upload the "
                                     "file itself)")
    try:
        with landing.local_path(f.key) as path:
            row = validate_upload(path, sha256_file(path), a, landing, now_ns)
            _copy_into_lake(lake, path, row, stored)
            return row
    except Exception as exc:  # noqa: BLE001
        if is_transient(exc):
            raise
        return unread_row(a, now_ns, f"could not be read from the landing zone "
                                     f"({type(exc).__name__}: {printable(str(exc))})")


def _classify_duplicates(rows: list[dict], existing: list[dict],
                         digests: _ValueDigests) -> list[dict]:
    """Mark usable rows that repeat an upload already in the lake (or earlier in `rows`):
    the same bytes, or the same messages in another file (a re-export or conversion: same
    topics, counts and time range, identical sensor values)."""
    stored: dict[str, str] = {}
    by_digest: dict[tuple[str, str], list[dict]] = {}
    for r in existing:
        if r["status"] in USABLE_STATUSES:
            stored.setdefault(r["upload_id"], r["raw_key"])
            if r["messages_digest"]:
                by_digest.setdefault((r["robot_id"], r["messages_digest"]), []).append(r)
    out = []
    for row in rows:
        row = dict(row)
        if row["status"] in USABLE_STATUSES and row["upload_id"] in stored:
            row.update(status=DUPLICATE, raw_key=stored[row["upload_id"]],
                       reasons=row["reasons"] + _named(row["file_name"], [
                           f"same bytes as an upload already in the lake "
                           f"({stored[row['upload_id']]})"]))
        elif row["status"] in USABLE_STATUSES and row["messages_digest"]:
            candidates = by_digest.get((row["robot_id"], row["messages_digest"]), [])
            # decoding is the expensive part: only when topics, counts and times all match
            mine = digests(row["upload_id"], row["raw_key"]) if candidates else None
            first = next((r for r in candidates
                          if mine is not None and digests(r["upload_id"], r["raw_key"]) == mine),
                         None)
            if first is not None:
                row.update(status=DUPLICATE, reasons=row["reasons"] + _named(row["file_name"], [
                    f"the same messages as upload {first['upload_id'][:12]} "
                    f"({printable(first['file_name'])}): same topics, counts and time range "
                    "and identical sensor values (a re-export or format conversion); indexed, "
                    "not cleaned again"]))
        if row["status"] in USABLE_STATUSES:
            stored.setdefault(row["upload_id"], row["raw_key"])
            if row["messages_digest"]:
                by_digest.setdefault((row["robot_id"], row["messages_digest"]), []).append(row)
        out.append(row)
    return out


_EXISTING_COLUMNS = ["upload_id", "landing_key", "file_name", "status", "raw_key", "robot_id",
                     "messages_digest", "date", "robot_type", "size_bytes", "arrived_ns"]


def _upload_key(row: dict) -> tuple[str, str, str, str]:
    # one row per file and partition: a file re-routed by a late sidecar gets a second row
    return row["upload_id"], row["landing_key"], row["date"], row["robot_type"]


def commit_uploads(lake: Store, rows: list[dict], digests: _ValueDigests | None = None,
                   ) -> tuple[int | None, list[dict]]:
    """Index judged rows in raw/uploads exactly once, whatever else writes at the same time.

    Decided on a snapshot and committed against its version: rows whose
    (upload_id, landing_key, date, robot_type) the snapshot holds are skipped, duplicates
    are classified against it; if another writer commits first, all of it is decided again.
    Returns (table version, the rows this call wrote).
    """
    digests = digests or _ValueDigests(lake)
    written: list[dict] = []

    def plan(snap: Snapshot) -> Write | None:
        existing = snap.read(_EXISTING_COLUMNS).to_dicts()
        have = {_upload_key(r) for r in existing}
        fresh = [r for r in rows if _upload_key(r) not in have]
        written[:] = _classify_duplicates(fresh, existing, digests)
        return Write(pa.Table.from_pylist(written, schema=UPLOADS_SCHEMA)) if written else None

    version = commit_keyed(lake, RAW_UPLOADS, plan, UPLOADS_PARTITION_BY) if rows else None
    return version, written


def ingest_partition(landing: Store, lake: Store, day: str, robot_type: str,
                     now_ns: int | None = None,
                     log: Callable[[str], None] = lambda _msg: None) -> IngestResult:
    """Validate, copy and index every landing file of one (date, robot_type) partition.

    Exactly once and idempotent: files already indexed (same key and version, or the
    same bytes under the same key) are skipped, and the commit skips what a concurrent
    writer indexed meanwhile. Every file gets a verdict; one bad file never fails the
    others. Files are copied before the commit, so an interrupted run leaves at worst an
    unreferenced copy that the re-run overwrites with the same bytes.
    """
    now_ns = now_ns or time.time_ns()
    assignments = [a for a in assign_partitions(landing, lake, list_landing(landing), now_ns)
                   if a.partition == (day, robot_type)]
    existing = read_table(lake, RAW_UPLOADS, columns=_EXISTING_COLUMNS)
    existing_rows = existing.to_pylist() if existing is not None else []
    here = [r for r in existing_rows if (r["date"], r["robot_type"]) == (day, robot_type)]
    seen_here = {(r["landing_key"], r["size_bytes"], r["arrived_ns"]): r["upload_id"]
                 for r in here}
    content_here = {(r["upload_id"], r["landing_key"]) for r in here}
    stored = {r["upload_id"]: r["raw_key"] for r in existing_rows
              if r["status"] in USABLE_STATUSES}
    marks: dict[tuple[str, str], str] = {}
    judged = []
    todo = []
    for a in assignments:
        known = seen_here.get((a.file.key, a.file.size, a.file.mtime_ns))
        if not known:
            todo.append(a)
        elif known != a.indexed_as:  # indexed before the landing index said so
            marks[(a.file.key, a.file.version)] = known
    for i, a in enumerate(todo, 1):
        row = judge_file(landing, lake, a, now_ns, stored)
        marks[(a.file.key, a.file.version)] = row["upload_id"]
        if (row["upload_id"], a.file.key) in content_here:  # touched, same bytes: nothing new
            log(f"[{i}/{len(todo)}] {printable(a.file.key)}: already indexed")
            continue
        judged.append(row)
    version, rows = commit_uploads(lake, judged)
    for i, row in enumerate(rows, 1):
        log(f"[{i}/{len(rows)}] {printable(row['landing_key'])}: {row['status']} (score "
            f"{row['quality_score']:.0f})" + (f" - {row['reasons'][-1]}" if row["reasons"] else ""))
    mark_indexed(lake, marks)
    return IngestResult(day, robot_type, rows, len(assignments) - len(rows), version)


def ingest_landing(landing: Store, lake: Store, now_ns: int | None = None,
                   log: Callable[[str], None] = lambda _msg: None,
                   ) -> dict[tuple[str, str], IngestResult]:
    """Ingest every partition the landing zone has files for, one after the other
    (the raw layer without Dagster: notebooks, benchmarks, tests)."""
    parts = sorted({a.partition for a in
                    assign_partitions(landing, lake, list_landing(landing), now_ns)})
    return {p: ingest_partition(landing, lake, *p, now_ns=now_ns, log=log) for p in parts}
