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

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
    structural_errors: list[str] = field(default_factory=list)

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics)


def _topic_stats(topic: str, msgtype: str, stamps: list[int] | np.ndarray) -> TopicStats:
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


def _mcap_identity(metadata: dict[str, str]) -> dict[str, str]:
    return {k: str(v) for k, v in metadata.items()}


def inspect_mcap(path: Path) -> RecordingInfo:
    from mcap.exceptions import EndOfFile, InvalidMagic, McapError
    from mcap.records import Channel, Footer, Message, Metadata, Schema, Statistics
    from mcap.stream_reader import CRCValidationError, StreamReader

    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    stamps: dict[int, list[int]] = {}
    identity: dict[str, str] | None = None
    stats: Statistics | None = None
    errors: list[str] = []
    complete = False
    size = path.stat().st_size
    with open(path, "rb") as f:
        reader = StreamReader(f, validate_crcs=True)
        try:
            for rec in reader.records:
                kind = type(rec)
                if kind is Message:
                    bucket = stamps.get(rec.channel_id)
                    if bucket is None:
                        bucket = stamps[rec.channel_id] = []
                    bucket.append(rec.log_time)
                elif kind is Channel:
                    channels[rec.id] = (rec.topic, schemas.get(rec.schema_id, ""))
                elif kind is Schema:
                    schemas[rec.id] = normalize_msgtype(rec.name)
                elif kind is Metadata and rec.name == "robot":
                    identity = _mcap_identity(rec.metadata)
                elif kind is Statistics:
                    stats = rec
                elif kind is Footer:
                    complete = True
        except InvalidMagic as exc:
            if f.tell() <= len(MCAP_MAGIC):
                raise RecordingError("not an MCAP file: wrong magic number at byte 0") from exc
            errors.append(
                f"truncated: the file ({size} bytes) ends without the closing MCAP magic"
            )
        except CRCValidationError as exc:
            errors.append(f"corrupt: CRC mismatch ({exc}); the file was damaged in transfer")
        except (EndOfFile, McapError, EOFError, ValueError) as exc:
            errors.append(
                f"truncated: the file ({size} bytes) ends inside a record at byte {f.tell()} "
                f"({type(exc).__name__}); expected the MCAP footer and closing magic"
            )
        except Exception as exc:  # zstd/lz4 errors on a cut chunk, struct errors
            errors.append(
                f"truncated or corrupt: reading stopped at byte {f.tell()} of {size} "
                f"({type(exc).__name__}: {exc})"
            )
    if not complete and not errors:
        errors.append(f"truncated: no MCAP footer in {size} bytes")

    topics = [
        _topic_stats(channels.get(cid, (f"<channel {cid}>", ""))[0],
                     channels.get(cid, ("", "unknown"))[1], ts)
        for cid, ts in sorted(stamps.items())
    ]
    # channels that were announced but carried no message still count as topics
    seen = set(stamps)
    topics += [_topic_stats(t, m, []) for cid, (t, m) in sorted(channels.items())
               if cid not in seen]
    start, end = _time_range(topics)
    info = RecordingInfo("mcap", identity, topics, start, end, structural_errors=errors)
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
                identity = _mcap_identity(meta.metadata)
        start = summary.statistics.message_start_time if summary.statistics.message_count else None
        return identity, start


# --------------------------------------------------------------------------- ROS 1 bag


def inspect_bag(path: Path) -> RecordingInfo:
    from rosbags.rosbag1 import Reader, ReaderError

    size = path.stat().st_size
    try:
        reader = Reader(path)
        reader.open()
    except ReaderError as exc:
        raise RecordingError(
            f"truncated or unindexed ROS 1 bag ({size} bytes): {exc}; "
            "expected the connection and chunk index at the end of the file"
        ) from exc
    errors: list[str] = []
    try:
        conns = {c.id: c for c in reader.connections}
        stamps: dict[int, list[int]] = {cid: [] for cid in conns}
        try:
            for conn, timestamp, _raw in reader.messages():
                stamps[conn.id].append(timestamp)
        except Exception as exc:  # decompression / record errors inside a chunk
            errors.append(f"corrupt chunk: {type(exc).__name__}: {exc}")
        topics = [_topic_stats(conns[cid].topic, normalize_msgtype(conns[cid].msgtype), ts)
                  for cid, ts in stamps.items()]
        declared: dict[str, int] = {}
        for c in conns.values():
            declared[c.topic] = declared.get(c.topic, 0) + c.msgcount
        start, end = _time_range(topics)
        return RecordingInfo(
            "bag", None, topics, start, end,
            declared_start_ns=reader.start_time if reader.message_count else None,
            declared_end_ns=(reader.end_time - 1) if reader.message_count else None,
            declared_counts=declared, structural_errors=errors,
        )
    finally:
        reader.close()


def probe_bag(path: Path) -> tuple[None, int | None]:
    from rosbags.rosbag1 import Reader

    with Reader(path) as reader:
        return None, (reader.start_time if reader.message_count else None)


# --------------------------------------------------------------------------- PX4 ULog


def inspect_ulog(path: Path) -> RecordingInfo:
    from pyulog import ULog

    try:
        ulog = ULog(str(path))
    except Exception as exc:
        raise RecordingError(f"unreadable PX4 ULog: {type(exc).__name__}: {exc}") from exc
    # ULog stamps are microseconds since boot; the GPS receiver's UTC clock gives the offset.
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
    return RecordingInfo("ulog", None, topics, start, end, structural_errors=errors)


# --------------------------------------------------------------------------- dispatch


def read_head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def inspect_recording(path: Path) -> RecordingInfo:
    """Read the whole file once; raise RecordingError if it cannot be read at all."""
    fmt = detect_format(read_head(path))
    if fmt == "mcap":
        return inspect_mcap(path)
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
