"""Reading robot recordings without decoding their messages.

One pass over a file gives what the raw layer indexes and validates: format,
embedded robot identity, topics with message types and counts, per-topic log
times (for monotonicity, duplicates and gaps) and the structural problems that
make a file unusable (bad magic, truncation, CRC errors, incomplete index).

Formats: ROS 2 MCAP, ROS 1 bag (v2.0) and PX4 ULog. ULog files are indexed
(topics, counts, absolute time from the GPS UTC clock) but carry no ROS sensor
messages, so later layers do not decode them.
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robolake.bagscan import BagScan
from robolake.errors import is_transient
from robolake.inflate import FormatProblem
from robolake.mcapscan import walk_mcap

MCAP_MAGIC = b"\x89MCAP0\r\n"
BAG_MAGIC = b"#ROSBAG V2.0\n"
ULOG_MAGIC = b"ULog\x01\x12\x35"

# ROS message type (ROS 2 spelling) -> sensor kind, as in the data contract.
SENSOR_KINDS: dict[str, str] = {
    "sensor_msgs/msg/Imu": "imu",
    "sensor_msgs/msg/NavSatFix": "gps",
    "sensor_msgs/msg/PointCloud2": "lidar",
    "sensor_msgs/msg/LaserScan": "lidar",
    "sensor_msgs/msg/CompressedImage": "camera",
    "sensor_msgs/msg/Image": "camera",
}

FORMAT_EXTENSIONS = {"mcap": ".mcap", "bag": ".bag", "ulog": ".ulg"}


def normalize_msgtype(msgtype: str) -> str:
    """'sensor_msgs/Imu' (ROS 1) and 'sensor_msgs/msg/Imu' (ROS 2) -> 'sensor_msgs/msg/Imu'."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    return msgtype


def sensor_kind(msgtype: str) -> str | None:
    return SENSOR_KINDS.get(normalize_msgtype(msgtype))


def detect_format(head: bytes) -> str | None:
    if head.startswith(MCAP_MAGIC):
        return "mcap"
    if head.startswith(BAG_MAGIC):
        return "bag"
    if head.startswith(ULOG_MAGIC):
        return "ulog"
    return None


class RecordingError(Exception):
    """A file that cannot be read at all; the message says why, for a person."""


@dataclass
class TopicStats:
    topic: str
    msgtype: str
    count: int
    first_ns: int
    last_ns: int
    backwards_steps: int  # log time went backwards within the topic
    duplicate_stamps: int  # same log time as the previous message of the topic
    max_gap_ns: int


@dataclass
class RecordingInfo:
    format: str
    identity: dict[str, str] | None  # embedded identity (MCAP metadata record 'robot')
    topics: list[TopicStats]
    start_ns: int | None  # earliest message log time actually read
    end_ns: int | None
    declared_start_ns: int | None = None  # from the file's own summary / index
    declared_end_ns: int | None = None
    declared_counts: dict[str, int] | None = None  # topic -> count, from summary / index
    structural_errors: list[str] = field(default_factory=list)  # the file is unusable
    warnings: list[str] = field(default_factory=list)  # usable, with less trust (flagged)

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics)


def _topic_stats(topic: str, msgtype: str, stamps: list[int] | np.ndarray) -> TopicStats:
    if isinstance(stamps, list):  # MCAP log times are u64: past 2262 they read as "future"
        stamps = np.minimum(np.asarray(stamps, dtype=np.uint64), np.iinfo(np.int64).max)
    arr = np.asarray(stamps, dtype=np.int64)
    if arr.size == 0:
        return TopicStats(topic, msgtype, 0, 0, 0, 0, 0, 0)
    diffs = np.diff(arr)
    return TopicStats(
        topic=topic,
        msgtype=msgtype,
        count=int(arr.size),
        first_ns=int(arr.min()),
        last_ns=int(arr.max()),
        backwards_steps=int((diffs < 0).sum()),
        duplicate_stamps=int((diffs == 0).sum()),
        max_gap_ns=int(diffs.max()) if diffs.size else 0,
    )


def _time_range(topics: list[TopicStats]) -> tuple[int | None, int | None]:
    present = [t for t in topics if t.count]
    if not present:
        return None, None
    return min(t.first_ns for t in present), max(t.last_ns for t in present)


# --------------------------------------------------------------------------- MCAP


def inspect_mcap(path: Path) -> RecordingInfo:
    walk = walk_mcap(path)  # raises FormatProblem (-> RecordingError) on a wrong magic
    channels = {cid: (topic, normalize_msgtype(walk.schemas.get(schema, "")))
                for cid, (topic, schema) in walk.channels.items()}
    topics = [_topic_stats(*channels.get(cid, (f"<channel {cid}>", "unknown")), ts)
              for cid, ts in sorted(walk.stamps.items())]
    # channels that were announced but carried no message still count as topics
    topics += [_topic_stats(t, m, []) for cid, (t, m) in sorted(channels.items())
               if cid not in walk.stamps]
    start, end = _time_range(topics)
    info = RecordingInfo("mcap", walk.identity, topics, start, end)
    if walk.problem is not None:
        info.structural_errors.append(str(walk.problem))
    elif walk.integrity_unverified:
        info.warnings.append(f"integrity not verifiable: {walk.integrity_unverified}; "
                             "flipped bits would go unnoticed")
    stats = walk.statistics
    if stats is not None:
        info.declared_start_ns = stats.message_start_time
        info.declared_end_ns = stats.message_end_time
        info.declared_counts = {}
        for cid, n in stats.channel_message_counts.items():
            topic = channels.get(cid, (f"<channel {cid}>", ""))[0]
            info.declared_counts[topic] = info.declared_counts.get(topic, 0) + n
    return info


def probe_mcap(path: Path) -> tuple[dict[str, str] | None, int | None]:
    """Identity and start time from the summary section, without reading messages."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        if summary is None or summary.statistics is None:
            raise RecordingError("no MCAP summary")
        identity = None
        for meta in reader.iter_metadata():
            if meta.name == "robot":
                identity = dict(meta.metadata)
        start = summary.statistics.message_start_time if summary.statistics.message_count else None
        return identity, start


# --------------------------------------------------------------------------- ROS 1 bag


def inspect_bag(path: Path) -> RecordingInfo:
    """Through the bag's index with `rosbags`; a bag whose index it rejects (not closed,
    old or damaged) is read by scanning its chunks, and the reasons say so."""
    from rosbags.rosbag1 import Reader

    try:
        with Reader(path) as reader:
            conns = {c.id: c for c in reader.connections}
            stamps: dict[int, list[int]] = {cid: [] for cid in conns}
            for conn, timestamp, _raw in reader.messages():
                stamps[conn.id].append(timestamp)
            declared: dict[str, int] = {}
            for c in conns.values():
                declared[c.topic] = declared.get(c.topic, 0) + c.msgcount
            start_end = (reader.start_time, reader.end_time - 1) if reader.message_count else None
    except Exception as exc:  # noqa: BLE001 - any index rosbags cannot use: scan the chunks
        if is_transient(exc):
            raise
        return _scanned_bag(path, _index_rejected(exc))
    topics = [_topic_stats(conns[cid].topic, normalize_msgtype(conns[cid].msgtype), ts)
              for cid, ts in stamps.items()]
    start, end = _time_range(topics)
    return RecordingInfo("bag", None, topics, start, end,
                         declared_start_ns=start_end[0] if start_end else None,
                         declared_end_ns=start_end[1] if start_end else None,
                         declared_counts=declared)


def _index_rejected(exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1].name
    detail = str(exc) or f"{type(exc).__name__} in {where}"
    return f"rosbags rejected its index ({detail[:160]})"


def _scanned_bag(path: Path, why: str) -> RecordingInfo:
    scan = BagScan(path)
    try:
        stamps: dict[int, list[int]] = {}
        for conn, ns, _data in scan.messages():
            stamps.setdefault(conn, []).append(ns)
    except FormatProblem as problem:  # not a bag at all
        raise RecordingError(str(problem)) from problem
    conns = scan.connections
    topics = [_topic_stats(conns[cid].topic, normalize_msgtype(conns[cid].msgtype),
                           stamps.get(cid, [])) for cid in sorted(conns)]
    start, end = _time_range(topics)
    info = RecordingInfo("bag", None, topics, start, end)
    if scan.problem is not None:
        info.structural_errors.append(str(scan.problem))
    if scan.index_pos == 0:
        why = "the bag has no index (index_pos 0: a recording that was not closed, .bag.active)"
    info.warnings.append(f"read by scanning its chunks in order, as `rosbag reindex` does: {why}")
    return info


def probe_bag(path: Path) -> tuple[None, int | None]:
    from rosbags.rosbag1 import Reader

    try:
        with Reader(path) as reader:
            return None, (reader.start_time if reader.message_count else None)
    except Exception:  # noqa: BLE001 - no usable index: the scan knows the start
        return None, _scanned_bag(path, "").start_ns


# --------------------------------------------------------------------------- PX4 ULog


def inspect_ulog(path: Path) -> RecordingInfo:
    from pyulog import ULog

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pyulog prints its warnings
            ulog = ULog(str(path))
    except Exception as exc:
        raise RecordingError(f"unreadable PX4 ULog: {type(exc).__name__}: {exc}") from exc
    # ULog stamps are microseconds since boot; the GPS receiver's UTC clock gives the offset.
    untimed = sorted(d.name for d in ulog.data_list if "timestamp" not in d.data)
    if untimed:
        raise RecordingError(f"corrupt: the ULog format definition of {untimed[0]!r} has no "
                             "timestamp field (a damaged definition record)")
    offset_us = None
    for data in ulog.data_list:
        if data.name == "vehicle_gps_position" and "time_utc_usec" in data.data:
            utc = np.asarray(data.data["time_utc_usec"], dtype=np.int64)
            boot = np.asarray(data.data["timestamp"], dtype=np.int64)
            ok = utc > 0
            if ok.any():
                offset_us = int(np.median(utc[ok] - boot[ok]))
                break
    errors = []
    if offset_us is None:
        errors.append("no absolute time: the ULog has no GPS UTC time (vehicle_gps_position."
                      "time_utc_usec) to turn boot-relative stamps into UTC")
        offset_us = 0
    topics = []
    for data in ulog.data_list:
        name = data.name if data.multi_id == 0 else f"{data.name}/{data.multi_id}"
        ts = (np.asarray(data.data["timestamp"], dtype=np.int64) + offset_us) * 1000
        topics.append(_topic_stats(name, f"px4/{data.name}", ts))
    start, end = _time_range(topics)
    cut = _ulog_cut(path)
    if cut:
        errors.insert(0, cut)
    return RecordingInfo("ulog", None, topics, start, end, structural_errors=errors,
                         warnings=["integrity not verifiable: PX4 ULog carries no checksums; "
                                   "flipped bits would go unnoticed"])


_ULOG_HEADER = 16  # magic (7), version (1), start timestamp (8)


def _ulog_cut(path: Path) -> str | None:
    """A ULog has no footer: a cut file shows as a last message running past its end."""
    size = path.stat().st_size
    if size < _ULOG_HEADER:
        return f"truncated: the file ({size} bytes) ends inside the 16-byte ULog header"
    with open(path, "rb") as f:
        data = f.read()
    at = last = _ULOG_HEADER
    while at + 3 <= size:  # message: size u16, type u8, payload
        last = at
        at += 3 + int.from_bytes(data[at:at + 2], "little")
    if at < size:
        return f"truncated: the file ({size} bytes) ends inside a ULog message header at byte {at}"
    if at > size:
        return (f"truncated: the file ({size} bytes) ends inside the ULog message at byte "
                f"{last}, which declares {at - last - 3} bytes")
    return None


# --------------------------------------------------------------------------- dispatch


def read_head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def inspect_recording(path: Path) -> RecordingInfo:
    """Read the whole file once; raise RecordingError if it cannot be read at all."""
    fmt = detect_format(read_head(path))
    if fmt == "mcap":
        try:
            return inspect_mcap(path)
        except FormatProblem as problem:
            raise RecordingError(str(problem)) from problem
    if fmt == "bag":
        return inspect_bag(path)
    if fmt == "ulog":
        return inspect_ulog(path)
    raise RecordingError(unknown_format_reason(path))


def unknown_format_reason(path: Path) -> str:
    head = read_head(path, 8)
    return (f"unknown format: first bytes {head!r} are not the magic number of MCAP "
            f"({MCAP_MAGIC!r}), ROS 1 bag ({BAG_MAGIC[:8]!r}) or PX4 ULog ({ULOG_MAGIC!r})")


def probe_recording(path: Path) -> tuple[str | None, dict[str, str] | None, int | None]:
    """(format, embedded identity, start time) as cheaply as the format allows.

    Never raises: a file that cannot be probed gets None fields and is judged by
    the full validation later.
    """
    fmt = detect_format(read_head(path))
    try:
        if fmt == "mcap":
            try:
                return (fmt, *probe_mcap(path))
            except Exception:
                info = inspect_mcap(path)  # no summary (e.g. truncated): read what is there
                return fmt, info.identity, info.start_ns
        if fmt == "bag":
            return (fmt, *probe_bag(path))
        if fmt == "ulog":
            info = inspect_ulog(path)
            return fmt, None, None if info.structural_errors else info.start_ns
    except Exception:
        return fmt, None, None
    return None, None, None


def read_sidecar(text: str | bytes, name: str) -> dict[str, str]:
    """Parse a `<file>.meta.json` sidecar; errors name the file and what was expected."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object with robot_id, robot_type, region")
    return {k: str(v) for k, v in data.items() if v is not None}
