"""Decoding sensor messages from MCAP (ROS 2 CDR) and ROS 1 bags into columns.

Fixed-layout types (Imu, NavSatFix) are decoded column-wise: the serialized
messages of a topic are stacked into one uint8 matrix and each field is read
at its byte offset with numpy, instead of deserializing message by message.
Point clouds, laser scans and images are summarised one message at a time
(10-30 Hz) and their payload bytes are never kept: tables hold a reference.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robolake.bagindex import (
    BagIndex,
    ChunkInconsistent,
    ChunkMessages,
    IndexRejected,
    _u32_at,
    byte_windows,
)
from robolake.bagscan import BagScan
from robolake.contract import LIDAR_MAX_RANGE_M
from robolake.jpegdc import BlackCheck
from robolake.mcapindex import McapIndex
from robolake.mcapscan import Definitions, iter_messages
from robolake.recordings import detect_format, normalize_msgtype, read_head, sensor_kind
from robolake.settings import get_settings
from robolake.workers import keep_freed_memory, run_all, usable_cpus


@dataclass
class RawMessages:
    """Serialized messages of one topic, in file order."""

    topic: str
    msgtype: str
    log_ns: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)


@dataclass
class Decoded:
    """Columns per sensor kind for one recording; each dict maps column -> numpy array.
    LiDAR and camera rows refer to their payload as f"{payload_ref}#{topic}@{log_ns}"
    (that column is built where the rows become a table: cleaned._frame)."""

    format: str
    imu: dict[str, np.ndarray]
    gps: dict[str, np.ndarray]
    lidar: dict[str, np.ndarray]
    camera: dict[str, np.ndarray]
    payload_ref: str = ""


def iter_sensor_messages(path: Path, start_ns: int | None = None,
                         end_ns: int | None = None) -> Iterator[tuple[str, str, int, bytes, str]]:
    """(topic, msgtype, log_ns, raw bytes, encoding) for every sensor message, in file order.

    With `start_ns`/`end_ns` only messages logged in [start_ns, end_ns) are read,
    through the file's index.
    """
    fmt = detect_format(read_head(path))
    if fmt == "mcap":
        sliced = start_ns is not None or end_ns is not None
        defs = Definitions.from_summary(path) if sliced else Definitions()
        known: dict[int, tuple[str, str] | None] = {}
        for channel, log_ns, data in iter_messages(path, defs, start_ns, end_ns):
            ch = known.get(channel, ())
            if ch == ():
                msgtype = normalize_msgtype(defs.msgtype(channel))
                ch = known[channel] = ((defs.channels[channel][0], msgtype)
                                       if sensor_kind(msgtype) else None)
            if ch is not None:
                yield ch[0], ch[1], log_ns, data, "cdr"
    elif fmt == "bag":
        yield from _bag_sensor_messages(path, start_ns, end_ns)
    else:
        raise ValueError(f"{path.name}: no sensor messages to decode in format {fmt!r}")


def _bag_sensor_messages(path: Path, start_ns: int | None,
                         end_ns: int | None) -> Iterator[tuple[str, str, int, bytes, str]]:
    """Through the bag's index (chunks outside the time range are not read); a bag without
    a usable index is scanned. Both give the messages in file order, the same ones."""
    index = _bag_index(path)
    if index is None:
        yield from _scanned_bag_messages(path, start_ns, end_ns)
        return
    sent = 0
    try:
        for message in _indexed_bag_messages(index, start_ns, end_ns):
            yield message
            sent += 1
    except ChunkInconsistent:  # the chunks before this one matched their index entry by entry
        yield from itertools.islice(_scanned_bag_messages(path, start_ns, end_ns), sent, None)


def _bag_index(path: Path) -> BagIndex | None:
    try:
        return BagIndex.read(path)
    except IndexRejected:  # absent, old or damaged: the scan reads it (raw did too)
        return None


def _bag_sensors(index: BagIndex) -> dict[int, tuple[str, str]]:
    """connection id -> (topic, message type) of the sensor connections."""
    types = {cid: (c.topic, normalize_msgtype(c.msgtype)) for cid, c in index.connections.items()}
    return {cid: tt for cid, tt in types.items() if sensor_kind(tt[1])}


def _indexed_bag_messages(index: BagIndex, start_ns: int | None,
                          end_ns: int | None) -> Iterator[tuple[str, str, int, bytes, str]]:
    sensors = _bag_sensors(index)
    for chunk in index.chunk_messages(set(sensors), start_ns, end_ns):
        plain = chunk.plain
        for conn, log_ns, at, n in zip(chunk.conn.tolist(), chunk.log_ns.tolist(),
                                       chunk.data_at.tolist(), chunk.data_len.tolist(),
                                       strict=True):
            topic, msgtype = sensors[conn]
            yield topic, msgtype, log_ns, plain[at:at + n], "ros1"


def _scanned_bag_messages(path: Path, start_ns: int | None,
                          end_ns: int | None) -> Iterator[tuple[str, str, int, bytes, str]]:
    scan = BagScan(path)
    types: dict[int, str | None] = {}
    for conn, ts, data in scan.messages():
        if (start_ns is not None and ts < start_ns) or (end_ns is not None and ts >= end_ns):
            continue
        msgtype = types.get(conn, "")
        if msgtype == "":
            msgtype = normalize_msgtype(scan.connections[conn].msgtype)
            types[conn] = msgtype = msgtype if sensor_kind(msgtype) else None
        if msgtype is not None:
            yield scan.connections[conn].topic, msgtype, ts, data, "ros1"
    if scan.problem is not None:
        raise ValueError(f"{path.name}: {scan.problem}")


def _time_span(path: Path) -> tuple[int, int, int] | None:
    """(first log time, last log time, message count) from the file's own index."""
    fmt = detect_format(read_head(path))
    try:
        if fmt == "mcap":
            from mcap.reader import make_reader

            with open(path, "rb") as f:
                stats = make_reader(f).get_summary().statistics
            return stats.message_start_time, stats.message_end_time, stats.message_count
        if fmt == "bag":
            index = _bag_index(path)
            return index.span() if index is not None else None
    except Exception:  # no usable index: decode serially
        return None
    return None


# --------------------------------------------------------------------------- fixed layouts


def _align(pos: int, n: int, base: int) -> int:
    """CDR aligns each primitive to its size, relative to the payload start `base`."""
    return base + (-(-(pos - base) // n)) * n


def _stack(data: list[bytes]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Group messages by length; each group as (row indices, uint8 matrix)."""
    lengths = np.fromiter((len(d) for d in data), dtype=np.int64, count=len(data))
    groups = {}
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        buf = b"".join(data[i] for i in idx)
        groups[int(length)] = (idx, np.frombuffer(buf, dtype=np.uint8).reshape(len(idx), length))
    return groups


def _col(mat: np.ndarray, offset: int, dtype: str) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    return np.ascontiguousarray(mat[:, offset:offset + size]).view(dtype).ravel()


def _header_layout(mat: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(stamp sec, stamp nsec, position after frame_id, payload base) for a same-length group."""
    if encoding == "cdr":
        if mat.shape[1] and mat[0, 1] != 1:
            raise ValueError("big-endian CDR is not supported")
        base, sec_at, len_at = 4, 4, 12
    else:  # ROS 1: uint32 seq first, no alignment
        base, sec_at, len_at = 0, 4, 12
    frame_len = _col(mat, len_at, "<u4")
    if not (frame_len == frame_len[0]).all():
        raise ValueError("frame_id length differs inside a same-length group")
    return (_col(mat, sec_at, "<i4" if encoding == "cdr" else "<u4").astype(np.int64),
            _col(mat, sec_at + 4, "<u4").astype(np.int64), len_at + 4 + int(frame_len[0]), base)


def _decode_groups(raw: RawMessages, encoding: str, fields_fn) -> dict[str, np.ndarray]:
    return _decode_matrices(_stack(raw.data), len(raw.data),
                            np.asarray(raw.log_ns, dtype=np.int64), encoding, fields_fn)


def _decode_matrices(groups: dict[int, tuple[np.ndarray, np.ndarray]], n: int,
                     log_ns: np.ndarray, encoding: str, fields_fn) -> dict[str, np.ndarray]:
    """Columns of n messages given as same-length groups (row indices, uint8 matrix)."""
    out: dict[str, np.ndarray] = {}
    for idx, mat in groups.values():
        sec, nsec, pos, base = _header_layout(mat, encoding)
        cols = {"stamp_ns": sec * 1_000_000_000 + nsec, **fields_fn(mat, pos, base, encoding)}
        for name, values in cols.items():
            if name not in out:
                out[name] = np.empty(n, dtype=values.dtype)
            out[name][idx] = values
    out["log_ns"] = log_ns
    return out


def _imu_fields(mat: np.ndarray, pos: int, base: int, encoding: str) -> dict[str, np.ndarray]:
    at = _align(pos, 8, base) if encoding == "cdr" else pos
    # orientation(4) + covariance(9), angular_velocity(3) + covariance(9), linear_acceleration(3)
    names = {"qx": 0, "qy": 1, "qz": 2, "qw": 3, "gx": 13, "gy": 14, "gz": 15,
             "ax": 25, "ay": 26, "az": 27}
    return {k: _col(mat, at + 8 * i, "<f8") for k, i in names.items()}


def _gps_fields(mat: np.ndarray, pos: int, base: int, encoding: str) -> dict[str, np.ndarray]:
    status_at = pos
    if encoding == "cdr":
        service_at = _align(status_at + 1, 2, base)
        lat_at = _align(service_at + 2, 8, base)
    else:
        lat_at = status_at + 3
    return {
        "status": _col(mat, status_at, "<i1").astype(np.int16),
        "lat": _col(mat, lat_at, "<f8"),
        "lon": _col(mat, lat_at + 8, "<f8"),
        "alt": _col(mat, lat_at + 16, "<f8"),
    }


def decode_imu(raw: RawMessages, encoding: str) -> dict[str, np.ndarray]:
    return _decode_groups(raw, encoding, _imu_fields)


def decode_gps(raw: RawMessages, encoding: str) -> dict[str, np.ndarray]:
    return _decode_groups(raw, encoding, _gps_fields)


# --------------------------------------------------------------------------- per message


class _Deserializer:
    def __init__(self) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.ros2 = get_typestore(Stores.ROS2_HUMBLE)
        self.ros1 = get_typestore(Stores.ROS1_NOETIC)

    def __call__(self, data: bytes, msgtype: str, encoding: str):
        if encoding == "cdr":
            return self.ros2.deserialize_cdr(data, msgtype)
        return self.ros1.deserialize_ros1(data, msgtype)


def _stamp(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


_POINT_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


@dataclass(frozen=True)
class CloudLayout:
    """Where a serialized PointCloud2's points are and how x, y, z are stored."""

    stamp_ns: int
    data_at: int
    n_points: int
    point_step: int
    xyz: tuple[tuple[int, int], ...]  # (offset, datatype) of x, y, z
    bigendian: bool

    @property
    def group(self) -> tuple:
        return self.n_points, self.point_step, self.xyz, self.bigendian


def cloud_layout(data: bytes, encoding: str) -> CloudLayout:
    """Parse a PointCloud2's header and field list (CDR or ROS 1) without a typestore."""
    cdr = encoding == "cdr"
    base = 4 if cdr else 0

    def aligned(pos: int) -> int:
        return _align(pos, 4, base) if cdr else pos

    sec, nsec, frame_len = struct.unpack_from("<iII" if cdr else "<III", data, 4)
    pos = aligned(16 + frame_len)
    height, width, n_fields = struct.unpack_from("<III", data, pos)
    pos += 12
    fields = {}
    for _ in range(n_fields):
        pos = aligned(pos)
        (name_len,) = struct.unpack_from("<I", data, pos)
        name = data[pos + 4: pos + 4 + name_len].rstrip(b"\0").decode()
        pos = aligned(pos + 4 + name_len)
        offset, datatype = struct.unpack_from("<IB", data, pos)
        pos = aligned(pos + 5) + 4  # + count
        fields[name] = (offset, datatype)
    if not all(k in fields for k in "xyz"):
        raise ValueError("PointCloud2 without x, y, z fields")
    bigendian = bool(data[pos])
    point_step, _row_step, size = struct.unpack_from("<III", data, aligned(pos + 1))
    data_at = aligned(pos + 1) + 12
    n_points = int(width) * int(height)
    if n_points * point_step > size or data_at + size > len(data):
        raise ValueError("PointCloud2 data shorter than width x height x point_step")
    return CloudLayout(sec * 1_000_000_000 + nsec, data_at, n_points, point_step,
                       tuple(fields[k] for k in "xyz"), bigendian)


class CloudLayouts:
    """cloud_layout with a cache: a topic's clouds usually share their field list and size,
    so the serialized bytes between frame_id and the point data repeat exactly."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, int], tuple[bytes, CloudLayout]] = {}

    def __call__(self, data: bytes, encoding: str) -> CloudLayout:
        sec, nsec, frame_len = struct.unpack_from("<iII" if encoding == "cdr" else "<III",
                                                  data, 4)
        hit = self._known.get((encoding, frame_len))
        if hit is not None and data[16 + frame_len: hit[1].data_at] == hit[0]:
            known = hit[1]  # (no dataclasses.replace: it costs more than the parse it saves)
            return CloudLayout(sec * 1_000_000_000 + nsec, known.data_at, known.n_points,
                               known.point_step, known.xyz, known.bigendian)
        layout = cloud_layout(data, encoding)
        self._known[(encoding, frame_len)] = (data[16 + frame_len: layout.data_at], layout)
        return layout


def _range_stats(r: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Per row of ranges: points, kept (<= LIDAR_MAX_RANGE_M), far, min/mean/max of kept."""
    far = valid & (r > LIDAR_MAX_RANGE_M)
    kept = valid & ~far
    n_kept = np.count_nonzero(kept, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(kept, r, 0.0).sum(axis=1) / n_kept  # (pairwise sums, as ever)
    lo = np.min(r, axis=1, where=kept, initial=np.inf)
    hi = np.max(r, axis=1, where=kept, initial=-np.inf)
    empty = n_kept == 0
    return {"points_total": np.full(r.shape[0], r.shape[1]), "points_kept": n_kept,
            "points_far": np.count_nonzero(far, axis=1),
            "range_min_m": np.where(empty, np.nan, lo), "range_mean_m": np.where(empty, np.nan,
                                                                                 mean),
            "range_max_m": np.where(empty, np.nan, hi)}


def _cloud_stats(points: bytes, n: int, first: CloudLayout) -> dict[str, np.ndarray]:
    """Range statistics of n clouds whose point bytes (layout `first`) are `points`."""
    endian = ">" if first.bigendian else "<"
    dtype = np.dtype({"names": list("xyz"),
                      "formats": [endian + _POINT_DTYPES[t] for _, t in first.xyz],
                      "offsets": [o for o, _ in first.xyz], "itemsize": first.point_step})
    pts = np.frombuffer(points, dtype=dtype).reshape(n, first.n_points)
    r = np.square(pts["x"], dtype=np.float64)  # x*x + y*y + z*z in float64, in place
    r += np.square(pts["y"], dtype=np.float64)
    r += np.square(pts["z"], dtype=np.float64)
    np.sqrt(r, out=r)
    return _range_stats(r, np.isfinite(r) & (r > 0))  # (0, 0, 0) is "no return"


def cloud_points(data: bytes, encoding: str) -> np.ndarray:
    """x, y, z (float32, n x 3) of one serialized PointCloud2, without "no return" points."""
    layout = cloud_layout(data, encoding)
    endian = ">" if layout.bigendian else "<"
    dtype = np.dtype({"names": list("xyz"),
                      "formats": [endian + _POINT_DTYPES[t] for _, t in layout.xyz],
                      "offsets": [o for o, _ in layout.xyz], "itemsize": layout.point_step})
    pts = np.frombuffer(data, dtype=dtype, count=layout.n_points, offset=layout.data_at)
    xyz = np.stack([pts[k].astype(np.float32) for k in "xyz"], axis=1)
    keep = np.isfinite(xyz).all(axis=1) & (np.abs(xyz).sum(axis=1) > 0)
    return xyz[keep]


def summarize_scan(msg) -> dict[str, np.ndarray]:
    """Range statistics of one LaserScan (returns outside its own min/max are invalid)."""
    r = np.asarray(msg.ranges, dtype=np.float64)[None, :]
    return _range_stats(r, np.isfinite(r) & (r >= msg.range_min) & (r <= msg.range_max))


BLACK_MAX_LEVEL = 16  # no 8x8 block brighter than this (of 255): the frame is black


def jpeg_levels(jpeg: bytes) -> tuple[int, int, np.ndarray]:
    """(width, height, 8x8 block mean levels) via libjpeg-turbo's DCT-domain downscale."""
    import simplejpeg

    height, width = simplejpeg.decode_jpeg_header(jpeg)[:2]
    gray = simplejpeg.decode_jpeg(jpeg, colorspace="GRAY", fastdct=True, fastupsample=True,
                                  min_height=max(1, height // 8), min_width=max(1, width // 8))
    return width, height, gray


def image_levels(msg) -> tuple[int, int, np.ndarray]:
    """(width, height, gray levels) of an uncompressed sensor_msgs/Image."""
    width, height = int(msg.width), int(msg.height)
    data = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    channels = max(1, len(data) // max(1, width * height))
    return width, height, data[: width * height * channels].reshape(height, width, channels)


class _CameraColumns:
    """Collects camera frames and their black flag. A JPEG frame is first given to the DC
    walker (robolake/jpegdc.py), which tells "not black" from its first bright luma block
    (or "black" from a small frame's every block); the others get their 8x8 block levels
    from the 1/8-scale decode. A chunk's CompressedImage frames (`add_jpegs`) are held, up
    to PENDING_BYTES, and their first blocks checked together (`bright_first_blocks`);
    the frames that does not tell go through the walker one by one. Brightness (the mean
    level) is computed only with ROBOLAKE_CAMERA_BRIGHTNESS on: then every frame is decoded,
    and brightness and the flag are computed a batch of frames at a time (vectorised), the
    levels dropped after each batch. With it off, brightness is null for every frame."""

    NAMES = ("topic", "log_ns", "stamp_ns", "bytes", "width", "height")
    BATCH = 1024
    PENDING_BYTES = 1 << 20  # JPEG bytes held for the batched check

    def __init__(self, brightness: bool | None = None) -> None:
        self.with_brightness = (get_settings().camera_brightness if brightness is None
                                else brightness)
        self.check = BlackCheck(BLACK_MAX_LEVEL)
        self.rows: list[tuple] = []  # frames added one by one, not yet summarised
        self.levels: list[np.ndarray | bool] = []  # their levels, or their flag
        self.parts: list[dict[str, np.ndarray]] = []  # summarised frames, in file order
        self.pending: list[dict[str, np.ndarray]] = []  # parts whose flags are not known yet
        self.held = bytearray()  # their frames, one after another

    def add_jpeg(self, topic: str, log_ns: int, stamp_ns: int, jpeg: bytes) -> None:
        row = (topic, log_ns, stamp_ns, len(jpeg))
        if self.with_brightness:
            width, height, levels = jpeg_levels(jpeg)
            self._add((*row, width, height), levels)
        else:
            width, height, black = self._judge(jpeg)
            self._add((*row, width, height), black)

    def add_jpegs(self, topics: np.ndarray, log_ns: np.ndarray, stamps: np.ndarray,
                  data: bytes, starts: np.ndarray, ends: np.ndarray) -> None:
        """CompressedImage frames data[starts[i]:ends[i]] in file order (a chunk's)."""
        if self.with_brightness:
            for topic, log, stamp, a, b in zip(topics.tolist(), log_ns.tolist(),
                                               stamps.tolist(), starts.tolist(),
                                               ends.tolist(), strict=True):
                self.add_jpeg(topic, log, stamp, data[a:b])
            return
        self._summarise()
        view = memoryview(data)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            self.held += view[a:b]
        n = len(topics)
        part = {"topic": topics, "log_ns": log_ns, "stamp_ns": stamps, "bytes": ends - starts,
                "width": np.zeros(n, dtype=np.int64), "height": np.zeros(n, dtype=np.int64),
                "is_black": np.zeros(n, dtype=bool)}
        self.parts.append(part)
        self.pending.append(part)
        if len(self.held) >= self.PENDING_BYTES:
            self._check_pending()

    def _check_pending(self) -> None:
        """The held frames' flags: their first blocks together, then the walker (and the
        full decode) for the others, in file order; once a frame admits a header, the
        frames after it are checked together again."""
        if not self.pending:
            return
        data = self.held
        sizes = np.concatenate([part["bytes"] for part in self.pending])
        ends = np.cumsum(sizes)
        starts = ends - sizes
        told, width, height = self.check.bright_first_blocks(data, starts, ends)
        black = np.zeros(len(told), dtype=bool)
        rest = np.flatnonzero(~told).tolist()
        while rest:
            i = rest.pop(0)
            admissions = self.check.admissions
            width[i], height[i], black[i] = self._judge(bytes(data[starts[i]:ends[i]]))
            if self.check.admissions != admissions and rest:
                later = np.asarray(rest)
                again, w, h = self.check.bright_first_blocks(data, starts[later], ends[later])
                width[later[again]], height[later[again]] = w[again], h[again]
                rest = later[~again].tolist()
        at = 0
        for part in self.pending:
            n = len(part["bytes"])
            part["width"][:], part["height"][:] = width[at:at + n], height[at:at + n]
            part["is_black"][:] = black[at:at + n]
            at += n
        self.pending, self.held = [], bytearray()

    def _judge(self, jpeg: bytes) -> tuple[int, int, bool]:
        """(width, height, black) of one frame: the walker, else the full decode."""
        known = self.check.decide(jpeg)
        if known is not None:  # told by the DC coefficients: nothing more to decode
            return known
        width, height, levels = jpeg_levels(jpeg)
        black = bool(levels.max() <= BLACK_MAX_LEVEL)
        self.check.confirm(jpeg, width, height, black)
        return width, height, black

    def add(self, topic: str, log_ns: int, stamp_ns: int, size: int,
            frame: tuple[int, int, np.ndarray]) -> None:
        width, height, levels = frame
        self._add((topic, log_ns, stamp_ns, size, width, height),
                  levels if self.with_brightness else bool(levels.max() <= BLACK_MAX_LEVEL))

    def _add(self, row: tuple, levels: np.ndarray | bool) -> None:
        self.rows.append(row)
        self.levels.append(levels)
        if len(self.levels) >= self.BATCH:
            self._summarise()

    def _summarise(self) -> None:
        """The frames added one by one become a part: their flags (and brightness) computed
        a batch at a time, their levels dropped."""
        if not self.rows:
            return
        brightness = np.full(len(self.levels), np.nan)
        black = np.empty(len(self.levels), dtype=bool)
        by_shape: dict[tuple, list[int]] = {}
        for i, levels in enumerate(self.levels):
            if isinstance(levels, bool):
                black[i] = levels
            else:
                by_shape.setdefault(levels.shape, []).append(i)
        for idx in by_shape.values():
            stack = np.stack([self.levels[i] for i in idx]).reshape(len(idx), -1)
            brightness[idx] = stack.mean(axis=1)
            black[idx] = stack.max(axis=1) <= BLACK_MAX_LEVEL
        part = _rows_to_columns(self.rows, list(self.NAMES))
        part["brightness"], part["is_black"] = brightness, black
        self.parts.append(part)
        self.rows, self.levels = [], []

    def columns(self) -> dict[str, np.ndarray]:
        self._check_pending()
        self._summarise()
        if not self.parts:
            return {}
        cols = {name: np.concatenate([part[name] for part in self.parts])
                for name in (*self.NAMES, "is_black")}
        cols["brightness"] = (np.concatenate([part["brightness"] for part in self.parts])
                              if self.with_brightness
                              else np.full(len(cols["log_ns"]), None, dtype=object))  # null
        return cols


def compressed_image_payload(data: bytes, encoding: str) -> tuple[int, bytes]:
    """(header stamp ns, image bytes) of a serialized CompressedImage, without a typestore."""
    if encoding == "cdr":
        base, (sec, nsec, frame_len) = 4, struct.unpack_from("<iII", data, 4)
    else:
        base, (_seq, sec, nsec, frame_len) = 0, struct.unpack_from("<IIII", data, 0)
    pos = 16 + frame_len
    if encoding == "cdr":
        pos = _align(pos, 4, base)
    (fmt_len,) = struct.unpack_from("<I", data, pos)
    pos += 4 + fmt_len
    if encoding == "cdr":
        pos = _align(pos, 4, base)
    (size,) = struct.unpack_from("<I", data, pos)
    return sec * 1_000_000_000 + nsec, data[pos + 4: pos + 4 + size]


# --------------------------------------------------------------------------- a recording


CLOUD_BATCH = 128  # frames summarised together; bounds the memory held for point clouds


class _LidarColumns:
    """Collects LiDAR frame summaries; point clouds are batched by topic and layout."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, dict[str, np.ndarray]]] = []
        # (topic, layout group) -> log times, stamps, point bytes (one part per add), layout
        self.pending: dict[tuple, tuple[list[int], list[int], list, CloudLayout]] = {}

    def add_cloud(self, topic: str, log_ns: int, data: bytes, layout: CloudLayout) -> None:
        span = layout.n_points * layout.point_step
        self.add_clouds(topic, layout, [log_ns], [layout.stamp_ns],
                        [data[layout.data_at:layout.data_at + span]])

    def add_clouds(self, topic: str, layout: CloudLayout, logs: list[int], stamps: list[int],
                   points) -> None:
        """Clouds of one topic in file order, all of `layout` (its stamp aside); `points`
        their point bytes, one item (bytes or uint8 row) per cloud. Batches fill and flush
        exactly as adding them one by one would."""
        key, at = (topic, layout.group), 0
        while at < len(logs):
            pending = self.pending.setdefault(key, ([], [], [], layout))
            take = min(len(logs) - at, CLOUD_BATCH - len(pending[0]))
            pending[0].extend(logs[at:at + take])
            pending[1].extend(stamps[at:at + take])
            pending[2].append(points[at:at + take])
            at += take
            if len(pending[0]) >= CLOUD_BATCH:
                self._flush(key)

    def add(self, topic: str, log_ns: int, stamp_ns: int, stats: dict[str, np.ndarray]) -> None:
        self.parts.append((topic, {"log_ns": np.array([log_ns]),
                                   "stamp_ns": np.array([stamp_ns]), **stats}))

    def _flush(self, key: tuple) -> None:
        logs, stamps, points, layout = self.pending.pop(key)
        joined = b"".join(p if isinstance(p, np.ndarray) else b"".join(p) for p in points)
        self.parts.append((key[0], {
            "log_ns": np.asarray(logs, dtype=np.int64),
            "stamp_ns": np.asarray(stamps, dtype=np.int64),
            **_cloud_stats(joined, len(logs), layout)}))

    def columns(self) -> dict[str, np.ndarray]:
        for key in list(self.pending):
            self._flush(key)
        return _concat_topics(self.parts)


PARALLEL_MIN_MESSAGES = 150_000  # below this, starting worker processes costs more than it saves


def decode_workers() -> int:
    """The local engine's processes: ROBOLAKE_DECODE_WORKERS, else the usable CPUs (max 4)."""
    return get_settings().decode_workers or min(usable_cpus(), 4)


def decode_recording(path: Path, payload_ref: str, workers: int | None = None) -> Decoded:
    """Decode every sensor topic of a recording into columns.

    `payload_ref` (the raw copy's key) goes with the columns: LiDAR and camera rows
    refer to their payload by it, their topic and log time. A large recording is split
    into log-time slices decoded in parallel processes (robolake.workers: kept warm from
    one recording to the next), then concatenated in time order.
    """
    workers = decode_workers() if workers is None else workers
    span = _time_span(path) if workers > 1 else None
    if span is None or span[2] < PARALLEL_MIN_MESSAGES:
        keep_freed_memory()
        return _decode_slice(path, payload_ref)
    start, end, _ = span
    edges = [start + (end + 1 - start) * i // workers for i in range(workers + 1)]
    parts = run_all(workers, _decode_slice, [(path, payload_ref, a, b)
                                             for a, b in itertools.pairwise(edges)])
    merged = {kind: _concat_parts([getattr(p, kind) for p in parts])
              for kind in ("imu", "gps", "lidar", "camera")}
    return Decoded(format=parts[0].format, **merged, payload_ref=payload_ref)


def _concat_parts(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column by column, releasing each part's column once it is copied: the
    peak is the output plus one column, not twice the output."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    return {k: np.concatenate([p.pop(k) for p in parts]) for k in list(parts[0])}


FIXED_BATCH = 2048  # fixed-layout messages held as bytes per topic before decoding to columns


class _FixedColumns:
    """IMU and GPS messages of each topic, decoded to columns every FIXED_BATCH messages, so a
    worker holds a bounded number of message bytes however long its slice is."""

    def __init__(self) -> None:
        self.pending: dict[str, RawMessages] = {}
        self.parts: dict[str, list[dict[str, np.ndarray]]] = {}
        self.msgtypes: dict[str, str] = {}  # in the order topics first appear

    def add(self, topic: str, msgtype: str, log_ns: int, data: bytes, encoding: str) -> None:
        raw = self.pending.get(topic)
        if raw is None:
            raw = self.pending[topic] = RawMessages(topic, msgtype)
            self.msgtypes[topic] = msgtype
        raw.log_ns.append(log_ns)
        raw.data.append(data)
        if len(raw.data) >= FIXED_BATCH:
            self._flush(topic, encoding)

    def add_block(self, topic: str, msgtype: str, log_ns: np.ndarray,
                  groups: dict[int, tuple[np.ndarray, np.ndarray]], encoding: str) -> None:
        """Messages of one topic already stacked by length (a bag chunk's, via its index)."""
        if topic in self.pending:  # keep the topic's file order
            self._flush(topic, encoding)
        self.msgtypes.setdefault(topic, msgtype)
        fields_fn = _imu_fields if sensor_kind(msgtype) == "imu" else _gps_fields
        self.parts.setdefault(topic, []).append(
            _decode_matrices(groups, len(log_ns), log_ns, encoding, fields_fn))

    def _flush(self, topic: str, encoding: str) -> None:
        raw = self.pending.pop(topic)
        decode = decode_imu if sensor_kind(raw.msgtype) == "imu" else decode_gps
        self.parts.setdefault(topic, []).append(decode(raw, encoding))

    def columns(self, kind: str, encoding: str) -> dict[str, np.ndarray]:
        for topic in list(self.pending):
            self._flush(topic, encoding)
        return _concat_topics([(topic, _concat_parts(self.parts[topic]))
                               for topic, msgtype in self.msgtypes.items()  # first seen first
                               if sensor_kind(msgtype) == kind])


class _SliceColumns:
    """What one slice's messages become: fixed layouts, LiDAR and camera summaries."""

    def __init__(self) -> None:
        self._deserializer: _Deserializer | None = None
        self.fixed = _FixedColumns()
        self.encoding = "cdr"
        self.lidar = _LidarColumns()
        self.camera = _CameraColumns()
        self.layouts = CloudLayouts()
        self.kinds: dict[str, str | None] = {}

    def deserialize(self, data: bytes, msgtype: str, encoding: str):
        """rosbags' typestores, built on first use (0.15 s: most slices never need them)."""
        if self._deserializer is None:
            self._deserializer = _Deserializer()
        return self._deserializer(data, msgtype, encoding)

    def add(self, topic: str, msgtype: str, log_ns: int, data: bytes, encoding: str) -> None:
        self.encoding = encoding
        kind = self.kinds.get(msgtype) or self.kinds.setdefault(msgtype, sensor_kind(msgtype))
        if kind in ("imu", "gps"):
            self.fixed.add(topic, msgtype, log_ns, data, encoding)
        elif kind == "lidar" and msgtype.endswith("PointCloud2"):
            self.lidar.add_cloud(topic, log_ns, data, self.layouts(data, encoding))
        elif kind == "lidar":
            msg = self.deserialize(data, msgtype, encoding)
            self.lidar.add(topic, log_ns, _stamp(msg), summarize_scan(msg))
        elif kind == "camera" and msgtype.endswith("CompressedImage"):
            self.camera.add_jpeg(topic, log_ns, *compressed_image_payload(data, encoding))
        elif kind == "camera":
            msg = self.deserialize(data, msgtype, encoding)
            self.camera.add(topic, log_ns, _stamp(msg), len(msg.data), image_levels(msg))

    def decoded(self, fmt: str, payload_ref: str) -> Decoded:
        return Decoded(
            format=fmt,
            imu=self.fixed.columns("imu", self.encoding),
            gps=self.fixed.columns("gps", self.encoding),
            lidar=self.lidar.columns(),
            camera=self.camera.columns(),
            payload_ref=payload_ref,
        )


def _decode_slice(path: Path, payload_ref: str, start_ns: int | None = None,
                  end_ns: int | None = None) -> Decoded:
    fmt = detect_format(read_head(path)) or ""
    columns = _decode_indexed(path, fmt, start_ns, end_ns)
    if columns is not None:
        return columns.decoded(fmt, payload_ref)
    if fmt == "bag":
        messages = _scanned_bag_messages(path, start_ns, end_ns)
    else:
        messages = iter_sensor_messages(path, start_ns, end_ns)
    columns = _SliceColumns()
    for message in messages:
        columns.add(*message)
    return columns.decoded(fmt, payload_ref)


def _decode_indexed(path: Path, fmt: str, start_ns: int | None,
                    end_ns: int | None) -> _SliceColumns | None:
    """A bag or MCAP file through its index; None when it has no usable index or a chunk
    its index does not describe (the caller then scans the file, as without an index)."""
    index = _bag_index(path) if fmt == "bag" else _mcap_index(path) if fmt == "mcap" else None
    if index is None:
        return None
    sensors = _bag_sensors(index) if fmt == "bag" else _mcap_sensors(index)
    try:
        return _decode_chunks(index.chunk_messages(set(sensors), start_ns, end_ns), sensors,
                              "ros1" if fmt == "bag" else "cdr")
    except ChunkInconsistent:
        return None


def _mcap_index(path: Path) -> McapIndex | None:
    try:
        return McapIndex.read(path)
    except IndexRejected:  # no summary or message indexes, or they do not describe the file
        return None


def _mcap_sensors(index: McapIndex) -> dict[int, tuple[str, str]]:
    """channel id -> (topic, message type) of the sensor channels."""
    types = {cid: (c[0], normalize_msgtype(index.msgtype(cid)))
             for cid, c in index.channels.items()}
    return {cid: tt for cid, tt in types.items() if sensor_kind(tt[1])}


def _decode_chunks(chunks: Iterator[ChunkMessages], sensors: dict[int, tuple[str, str]],
                   encoding: str) -> _SliceColumns:
    """Chunks read through their index (bag or MCAP): per chunk, each IMU / GPS topic's
    messages are gathered into byte matrices and decoded as a block; LiDAR and camera in
    file order (_add_in_file_order). The columns equal those of feeding the scan's messages
    one by one."""
    columns = _SliceColumns()
    columns.encoding = encoding
    kinds = _channel_kinds(sensors)
    for chunk in chunks:
        kind = kinds[chunk.conn]
        rows = np.flatnonzero(kind == _FIXED)
        conns, first = np.unique(chunk.conn[rows], return_index=True)
        by_topic: dict[str, list[int]] = {}  # topics in the order they first appear
        for cid in conns[np.argsort(first)].tolist():
            by_topic.setdefault(sensors[cid][0], []).append(cid)
        for topic, cids in by_topic.items():
            mine = rows[np.isin(chunk.conn[rows], cids)] if len(cids) > 1 else \
                rows[chunk.conn[rows] == cids[0]]
            columns.fixed.add_block(topic, sensors[cids[0]][1], chunk.log_ns[mine],
                                    chunk.matrices(mine), encoding)
        others = np.flatnonzero(kind != _FIXED)
        _add_in_file_order(columns, chunk, others, kind[others], sensors, encoding)
    return columns


_FIXED, _CLOUD, _LIDAR, _JPEG, _CAMERA = range(1, 6)  # how a chunk's message is decoded


def _channel_kinds(sensors: dict[int, tuple[str, str]]) -> np.ndarray:
    """channel id -> _FIXED, _CLOUD ... (0: not a sensor), as a lookup table."""
    kinds = np.zeros(max(sensors, default=0) + 1, dtype=np.uint8)
    for cid, (_, msgtype) in sensors.items():
        kind = sensor_kind(msgtype)
        kinds[cid] = (_FIXED if kind in ("imu", "gps") else
                      (_CLOUD if msgtype.endswith("PointCloud2") else _LIDAR) if kind == "lidar"
                      else _JPEG if msgtype.endswith("CompressedImage") else _CAMERA)
    return kinds


def _add_in_file_order(columns: _SliceColumns, chunk: ChunkMessages, rows: np.ndarray,
                       kind: np.ndarray, sensors: dict[int, tuple[str, str]],
                       encoding: str) -> None:
    """LiDAR and camera messages in file order (their rows' order depends on it): point
    clouds as blocks where a chunk's LiDAR messages all share one serialized layout, and
    CompressedImage frames with their stamp and image bytes located in bulk; the rest one
    by one."""
    clouds = kind == _CLOUD
    if clouds.any() and not (kind == _LIDAR).any() and _add_cloud_blocks(
            columns, chunk, rows[clouds], sensors, encoding):
        rows, kind = rows[~clouds], kind[~clouds]
    jpeg = kind == _JPEG
    # a chunk's CompressedImage frames as one block, unless other camera messages lie
    # among them (the camera rows' order is file order)
    spans = (_jpeg_spans(chunk, rows[jpeg], encoding)
             if jpeg.any() and not (kind == _CAMERA).any() else None)
    if spans is not None:
        stamps, starts, ends = spans
        topics = np.asarray([sensors[c][0] for c in chunk.conn[rows[jpeg]].tolist()],
                            dtype=object)
        columns.camera.add_jpegs(topics, chunk.log_ns[rows[jpeg]], stamps, chunk.plain,
                                 starts, ends)
        rows = rows[~jpeg]
    for i, cid, log_ns in zip(rows.tolist(), chunk.conn[rows].tolist(),
                              chunk.log_ns[rows].tolist(), strict=True):
        topic, msgtype = sensors[cid]
        columns.add(topic, msgtype, log_ns, chunk.data(i), encoding)


def _header_stamps(buf: np.ndarray, at: np.ndarray, encoding: str) -> np.ndarray:
    """std_msgs/Header stamps (ns) of serialized messages starting at `at` (>= 16 bytes)."""
    sec, nsec = _u32_at(buf, at + 4), _u32_at(buf, at + 8)
    if encoding == "cdr":
        sec = np.where(sec >= 2**31, sec - 2**32, sec)  # int32 in ROS 2
    return sec * 1_000_000_000 + nsec


def _add_cloud_blocks(columns: _SliceColumns, chunk: ChunkMessages, rows: np.ndarray,
                      sensors: dict[int, tuple[str, str]], encoding: str) -> bool:
    """A chunk's PointCloud2 messages (file order) as blocks per run of one topic, when all
    share the first one's serialized layout: the bytes between frame_id and the points
    equal, CloudLayouts' own test, as one byte matrix. False: nothing added."""
    buf = np.frombuffer(chunk.plain, dtype=np.uint8)
    first = chunk.data(int(rows[0]))
    layout = columns.layouts(first, encoding)  # parsed (or cached) as one by one
    at, n = chunk.data_at[rows], chunk.data_len[rows]
    span = layout.n_points * layout.point_step
    if not (span and (n >= layout.data_at + span).all()):
        return False
    head = 16 + struct.unpack_from("<I", first, 12)[0]
    if (_u32_at(buf, at + 12) != head - 16).any():
        return False
    if not (byte_windows(buf, layout.data_at - head)[at + head]
            == np.frombuffer(first, np.uint8, layout.data_at - head, head)).all():
        return False
    stamps = _header_stamps(buf, at, encoding).tolist()
    points = byte_windows(buf, span)[at + layout.data_at]
    logs = chunk.log_ns[rows].tolist()
    topics = [sensors[c][0] for c in chunk.conn[rows].tolist()]
    edges = [0, *(i for i in range(1, len(topics)) if topics[i] != topics[i - 1]), len(topics)]
    for a, b in itertools.pairwise(edges):
        columns.lidar.add_clouds(topics[a], layout, logs[a:b], stamps[a:b], points[a:b])
    return True


def _jpeg_spans(chunk: ChunkMessages, rows: np.ndarray,
                encoding: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(header stamp, image start, image end in the chunk) of serialized CompressedImages,
    as compressed_image_payload reads them; None if a field would lie past its message."""
    buf = np.frombuffer(chunk.plain, dtype=np.uint8)
    at, n = chunk.data_at[rows], chunk.data_len[rows]
    if (n < 16).any():
        return None
    pos = 16 + _u32_at(buf, at + 12)
    for _ in range(2):  # format string, then the image bytes
        if encoding == "cdr":
            pos = 4 + (pos - 1) // 4 * 4  # CDR aligns to 4 from the payload's start (byte 4)
        if (pos + 4 > n).any():
            return None
        length = _u32_at(buf, at + pos)
        pos = pos + 4 + length
    start = at + pos - length
    return _header_stamps(buf, at, encoding), start, np.minimum(at + pos, at + n)


def _concat_topics(parts: list[tuple[str, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    sizes = [(t, len(p["log_ns"])) for t, p in parts]
    out = _concat_parts([p for _, p in parts])
    out["topic"] = np.concatenate([_repeat(t, n) for t, n in sizes])
    return out


def _repeat(value: str, n: int) -> np.ndarray:
    """An object column holding one str n times (np.full would make n copies of it)."""
    column = np.empty(n, dtype=object)
    column.fill(value)
    return column


def _rows_to_columns(rows: list[tuple], names: list[str]) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    cols = {name: np.asarray([r[i] for r in rows], dtype=object if name == "topic" else None)
            for i, name in enumerate(names)}  # the topic column shares the rows' str objects
    return cols

