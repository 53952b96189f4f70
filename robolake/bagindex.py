"""Reading a ROS 1 bag (v2.0) through its index, chunk by chunk, as the MCAP path does.

The index section (bag header -> index_pos: connection and chunk info records) and
each chunk's IndexData records (per connection: every message's time and offset in
the inflated chunk) say where every message is. A time slice skips the chunks outside
it without inflating them; inside a chunk the message records are located with numpy
(header and data lengths gathered at the offsets, the headers checked against the
index as byte matrices), with no per-record header parsing on the hot path.

An index that is absent (`index_pos` 0, `.bag.active`) or does not describe the file
(`IndexRejected`) sends the caller to `BagScan`, as before. A chunk whose records do not
match its index (a message the index does not list, a time or connection that differs)
raises `ChunkInconsistent` before any of its messages is handed out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robolake.bagscan import (
    MAGIC,
    OP_BAG_HEADER,
    OP_CHUNK,
    OP_CHUNK_INFO,
    OP_CONNECTION,
    OP_INDEX,
    OP_MESSAGE,
    BagConnection,
    _fields,
    _message_fields,
)
from robolake.inflate import FormatProblem, inflate

_U32 = struct.Struct("<I")
_INDEX_ENTRY = np.dtype([("sec", "<u4"), ("nsec", "<u4"), ("offset", "<u4")])


class IndexRejected(Exception):
    """The bag's index cannot be used; the message says why (file and field)."""


class ChunkInconsistent(Exception):
    """A chunk's records do not match its index entries."""


@dataclass
class ChunkIndex:
    """One chunk: where its data is and its messages in file order (sorted by offset)."""

    pos: int
    compression: str
    size: int  # inflated
    data_at: int
    data_len: int
    conn: np.ndarray  # uint32
    time_ns: np.ndarray  # int64
    offset: np.ndarray  # int64


@dataclass
class ChunkMessages:
    """The messages of one inflated chunk that a reader asked for, in file order."""

    plain: bytes
    conn: np.ndarray
    log_ns: np.ndarray
    data_at: np.ndarray
    data_len: np.ndarray

    def data(self, i: int) -> bytes:
        at = int(self.data_at[i])
        return self.plain[at:at + int(self.data_len[i])]

    def matrices(self, rows: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Messages `rows` grouped by length: length -> (positions in rows, uint8 matrix)."""
        buf = np.frombuffer(self.plain, dtype=np.uint8)
        lengths = self.data_len[rows]
        groups = {}
        for length in np.unique(lengths):
            idx = np.flatnonzero(lengths == length)
            starts = self.data_at[rows[idx]]
            if length == 0:
                groups[0] = (idx, np.zeros((len(idx), 0), dtype=np.uint8))
                continue
            windows = byte_windows(buf, int(length))
            groups[int(length)] = (idx, windows[starts])
        return groups


@dataclass
class BagIndex:
    path: Path
    size: int
    connections: dict[int, BagConnection]
    chunks: list[ChunkIndex]
    inflated: int = 0  # chunks inflated so far (a slice reads only those it needs)

    @classmethod
    def read(cls, path: Path) -> BagIndex:
        size = path.stat().st_size
        with open(path, "rb") as f:
            try:
                return cls(path, size, *_read_index(f, size))
            except (FormatProblem, struct.error, ValueError, KeyError) as exc:
                raise IndexRejected(f"{path.name}: {exc}") from exc

    def span(self) -> tuple[int, int, int] | None:
        """(first log time, last log time, message count) from the index entries."""
        times = [c.time_ns for c in self.chunks if len(c.time_ns)]
        if not times:
            return None
        return (min(int(t.min()) for t in times), max(int(t.max()) for t in times),
                sum(len(t) for t in times))

    def chunk_messages(self, conns: set[int], start_ns: int | None = None,
                       end_ns: int | None = None) -> Iterator[ChunkMessages]:
        """Per chunk holding a wanted message, its messages of `conns` logged in
        [start_ns, end_ns); other chunks are not read."""
        lo = -(2**63) if start_ns is None else start_ns
        hi = 2**63 - 1 if end_ns is None else end_ns
        wanted = np.fromiter(conns, dtype=np.uint32, count=len(conns))
        with open(self.path, "rb") as f:
            for chunk in self.chunks:
                keep = np.isin(chunk.conn, wanted) & (chunk.time_ns >= lo) & (chunk.time_ns < hi)
                if not keep.any():
                    continue
                f.seek(chunk.data_at)
                where = f"{self.path.name}: the chunk at byte {chunk.pos}"
                plain = inflate(f.read(chunk.data_len), chunk.compression, chunk.size, where)
                self.inflated += 1
                data_at, data_len = _locate(plain, chunk, self.connections, where)
                rows = np.flatnonzero(keep)
                yield ChunkMessages(plain, chunk.conn[rows], chunk.time_ns[rows],
                                    data_at[rows], data_len[rows])


# --------------------------------------------------------------------------- the index


def _read_index(f, size: int) -> tuple[dict[int, BagConnection], list[ChunkIndex]]:
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a ROS 1 bag v2.0: wrong magic line at byte 0")
    header, _, data_end = _record(f, len(MAGIC), size, OP_BAG_HEADER)
    if header.get(b"encryptor"):
        raise ValueError("the bag is encrypted")
    index_pos = _int(header, b"index_pos", "<Q")
    if index_pos == 0:
        raise ValueError("the bag has no index (index_pos 0: a recording that was not closed)")
    if not data_end <= index_pos < size:
        raise ValueError(f"index_pos {index_pos} is outside the file's records")
    f.seek(index_pos)
    connections: dict[int, BagConnection] = {}
    pos = index_pos
    for _ in range(_int(header, b"conn_count", "<I")):
        conn_header, data, pos = _record(f, pos, size, OP_CONNECTION)
        conn = _int(conn_header, b"conn", "<I")
        info = _fields(data, f"the connection record at byte {pos}")
        topic = conn_header.get(b"topic") or info.get(b"topic", b"")
        connections.setdefault(conn, BagConnection(
            conn, topic.decode("utf-8", "replace"), info[b"type"].decode("utf-8", "replace")))
    infos = []
    for _ in range(_int(header, b"chunk_count", "<I")):
        info_header, data, pos = _record(f, pos, size, OP_CHUNK_INFO)
        if _int(info_header, b"ver", "<I") != 1:
            raise ValueError(f"the chunk info record before byte {pos} is not version 1")
        counts = np.frombuffer(data, dtype="<u4").reshape(-1, 2)
        if len(counts) != _int(info_header, b"count", "<I"):
            raise ValueError(f"the chunk info record before byte {pos} miscounts its connections")
        infos.append((_int(info_header, b"chunk_pos", "<Q"), counts))
    chunks = _chunks(f, size, sorted(infos, key=lambda i: i[0]), connections, data_end, index_pos)
    return connections, chunks


def _chunks(f, size: int, infos: list, connections: dict[int, BagConnection], data_start: int,
            index_pos: int) -> list[ChunkIndex]:
    """Each chunk record and its IndexData records; they must tile the data section (only
    connection records between them), so no message lies outside the index."""
    chunks, pos = [], data_start
    for chunk_pos, counts in infos:
        _only_connections_between(f, pos, chunk_pos, size)
        header, data_at, data_len, pos = _chunk_record(f, chunk_pos, size)
        parts = []
        for conn, count in counts:
            idx_header, data, pos = _record(f, pos, size, OP_INDEX)
            fields = tuple(_int(idx_header, name, "<I") for name in (b"ver", b"conn", b"count"))
            if fields != (1, conn, count) or len(data) != 12 * count:
                raise ValueError(f"the IndexData record before byte {pos} does not match the "
                                 f"chunk info of the chunk at byte {chunk_pos}")
            if int(conn) not in connections:
                raise ValueError(f"the chunk at byte {chunk_pos} indexes undefined connection "
                                 f"{conn}")
            parts.append((conn, np.frombuffer(data, dtype=_INDEX_ENTRY)))
        chunks.append(_chunk_index(chunk_pos, header, data_at, data_len, parts))
    _only_connections_between(f, pos, index_pos, size)
    return chunks


def _chunk_index(pos: int, header: dict, data_at: int, data_len: int, parts: list) -> ChunkIndex:
    entries = np.concatenate([p for _, p in parts]) if parts else np.empty(0, _INDEX_ENTRY)
    conn = np.concatenate([np.full(len(p), c, dtype=np.uint32) for c, p in parts]) \
        if parts else np.empty(0, dtype=np.uint32)
    order = np.argsort(entries["offset"], kind="stable")
    entries = entries[order]
    time_ns = entries["sec"].astype(np.int64) * 1_000_000_000 + entries["nsec"]
    return ChunkIndex(pos, header.get(b"compression", b"none").decode("ascii", "replace"),
                      _int(header, b"size", "<I"), data_at, data_len, conn[order], time_ns,
                      entries["offset"].astype(np.int64))


def _only_connections_between(f, pos: int, end: int, size: int) -> None:
    if pos > end:
        raise ValueError(f"records overlap at byte {end}")
    while pos < end:
        _, _, pos = _record(f, pos, size, OP_CONNECTION)
    if pos != end:
        raise ValueError(f"a record runs past byte {end}")


def _chunk_record(f, pos: int, size: int) -> tuple[dict, int, int, int]:
    f.seek(pos)
    header = _header(f, pos, size, OP_CHUNK)
    data_len = _length(f, size)
    data_at = f.tell()
    f.seek(data_len, 1)
    return header, data_at, data_len, data_at + data_len


def _record(f, pos: int, size: int, op: int) -> tuple[dict, bytes, int]:
    """(header fields, data, position after) of the record at `pos`, which must be `op`."""
    f.seek(pos)
    header = _header(f, pos, size, op)
    data = f.read(_length(f, size))
    return header, data, f.tell()


def _header(f, pos: int, size: int, op: int) -> dict:
    header = _fields(f.read(_length(f, size)), f"the record header at byte {pos}")
    if header.get(b"op") != bytes([op]):
        raise ValueError(f"the record at byte {pos} is not op {op:#04x}")
    return header


def _length(f, size: int) -> int:
    at = f.tell()
    raw = f.read(4)
    if len(raw) < 4 or _U32.unpack(raw)[0] > size - at - 4:
        raise ValueError(f"a record length at byte {at} runs past the file's end")
    return _U32.unpack(raw)[0]


def _int(header: dict, name: bytes, fmt: str) -> int:
    value = header[name]
    if len(value) != struct.calcsize(fmt):
        raise ValueError(f"field {name.decode()} has {len(value)} bytes")
    return struct.unpack(fmt, value)[0]


# --------------------------------------------------------------------------- inside a chunk


def byte_windows(buf: np.ndarray, width: int) -> np.ndarray:
    """Row i is buf[i:i + width] (a view of a 1-d uint8 array): numpy's sliding_window_view
    without its ~20 us of checks, paid thousands of times per recording."""
    return np.ndarray((max(len(buf) - width + 1, 0), width), np.uint8, buf, 0, (1, 1))


def _u32_at(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The little-endian uint32 at each byte position `at` of `buf`, as int64."""
    if not len(at):
        return np.empty(0, dtype=np.int64)
    words = byte_windows(buf, 4)[at]
    return words.view("<u4").ravel().astype(np.int64)


def _locate(plain: bytes, chunk: ChunkIndex, connections: dict[int, BagConnection],
            where: str) -> tuple[np.ndarray, np.ndarray]:
    """(data start, data length) of every indexed message; raises ChunkInconsistent unless
    each entry is a message record of its connection and time, and the records (with
    connection records between them) fill the chunk exactly."""
    buf = np.frombuffer(plain, dtype=np.uint8)
    n, end = len(chunk.offset), len(plain)
    rec_at = chunk.offset.copy()
    if n and (rec_at[-1] + 8 > end or rec_at[0] < 0):
        raise ChunkInconsistent(f"{where}: an index offset lies outside the chunk")
    header_len = _u32_at(buf, rec_at)
    good = _standard_headers(buf, rec_at, header_len, chunk, end)
    for i in np.flatnonzero(~good):  # rare: an offset at a connection record, odd headers
        rec_at[i], header_len[i] = _slow_entry(plain, int(rec_at[i]), chunk, i, where)
    len_at = rec_at + 4 + header_len
    if n and (len_at.max() + 4 > end):
        raise ChunkInconsistent(f"{where}: a message record runs past the chunk's end")
    data_len = _u32_at(buf, len_at)
    data_at = len_at + 4
    rec_end = data_at + data_len
    if n and (rec_end.max() > end or (rec_at[1:] < rec_end[:-1]).any()):
        raise ChunkInconsistent(f"{where}: message records overlap or run past its end")
    starts = np.concatenate([[0], rec_end])
    stops = np.concatenate([rec_at, [end]])
    for a in np.flatnonzero(starts != stops):  # gaps: only connection records
        _connections_only(plain, int(starts[a]), int(stops[a]), connections, where)
    return data_at, data_len


def _standard_headers(buf: np.ndarray, rec_at: np.ndarray, header_len: np.ndarray,
                      chunk: ChunkIndex, end: int) -> np.ndarray:
    """Which entries have a header of exactly op, conn, time (in the first such entry's
    field order) holding the index's conn and time: checked as one byte matrix."""
    good = np.zeros(len(rec_at), dtype=bool)
    if not len(rec_at) or (header_len != 38).all() or rec_at.max() + 42 > end:
        return good
    rows = np.flatnonzero(header_len == 38)
    windows = byte_windows(buf, 38)
    mat = windows[rec_at[rows] + 4]
    layout = _field_layout(bytes(mat[0]))
    if layout is None:
        return good
    template, op_at, conn_at, time_at = layout
    want = np.broadcast_to(np.frombuffer(template, dtype=np.uint8), mat.shape).copy()
    want[:, op_at] = OP_MESSAGE
    want[:, conn_at:conn_at + 4] = chunk.conn[rows].astype("<u4").view(np.uint8).reshape(-1, 4)
    sec, nsec = np.divmod(chunk.time_ns[rows], 1_000_000_000)
    want[:, time_at:time_at + 4] = sec.astype("<u4").view(np.uint8).reshape(-1, 4)
    want[:, time_at + 4:time_at + 8] = nsec.astype("<u4").view(np.uint8).reshape(-1, 4)
    good[rows] = (mat == want).all(axis=1)
    return good


def _field_layout(header: bytes) -> tuple[bytes, int, int, int] | None:
    """(the header, op/conn/time value positions) if it is op, conn, time in some order."""
    at, found = 0, {}
    for _ in range(3):
        (n,) = _U32.unpack_from(header, at)
        name = header[at + 4:at + 4 + n].partition(b"=")[0]
        found[name] = at + 5 + len(name)
        at += 4 + n
        if at > len(header):
            return None
    if at != len(header) or set(found) != {b"op", b"conn", b"time"}:
        return None
    return header, found[b"op"], found[b"conn"], found[b"time"]


def _slow_entry(plain: bytes, at: int, chunk: ChunkIndex, i: int, where: str) -> tuple[int, int]:
    """(record start, header length) of entry i, skipping connection records before it as
    rosbag's writer places them; the header must carry the index's conn and time."""
    while True:
        if at + 4 > len(plain):
            raise ChunkInconsistent(f"{where}: index entry {i} points past the chunk's end")
        (header_len,) = _U32.unpack_from(plain, at)
        if at + 8 + header_len > len(plain):
            raise ChunkInconsistent(f"{where}: the record at offset {at} runs past its end")
        op, conn, time = _message_fields(plain, at + 4, at + 4 + header_len)
        if op != OP_CONNECTION:
            break
        (data_len,) = _U32.unpack_from(plain, at + 4 + header_len)
        at += 8 + header_len + data_len
    if (op, conn, time) != (OP_MESSAGE, int(chunk.conn[i]), int(chunk.time_ns[i])):
        raise ChunkInconsistent(f"{where}: the record at offset {at} is not the message its "
                                f"index entry names (op {op}, conn {conn}, time {time})")
    return at, header_len


def _connections_only(plain: bytes, at: int, stop: int, connections: dict[int, BagConnection],
                      where: str) -> None:
    while at < stop:
        if at + 4 > stop:
            raise ChunkInconsistent(f"{where}: bytes at offset {at} belong to no record")
        (header_len,) = _U32.unpack_from(plain, at)
        if at + 8 + header_len > stop:
            raise ChunkInconsistent(f"{where}: the record at offset {at} overlaps a message")
        data_len = _U32.unpack_from(plain, at + 4 + header_len)[0]
        data_at = at + 8 + header_len
        try:
            header = _fields(plain[at + 4:data_at - 4], f"{where}, offset {at}")
            info = _fields(plain[data_at:data_at + data_len], f"{where}, offset {at}")
        except FormatProblem as exc:
            raise ChunkInconsistent(str(exc)) from exc
        if header.get(b"op") != bytes([OP_CONNECTION]):
            raise ChunkInconsistent(f"{where}: the record at offset {at} is not in its index")
        conn = header.get(b"conn", b"")
        known = connections.get(_U32.unpack(conn)[0]) if len(conn) == 4 else None
        topic = (header.get(b"topic") or info.get(b"topic", b"")).decode("utf-8", "replace")
        msgtype = info.get(b"type", b"").decode("utf-8", "replace")
        if known is None or (known.topic, known.msgtype) != (topic, msgtype):
            raise ChunkInconsistent(f"{where}: the connection record at offset {at} differs "
                                    "from the bag's index")
        at = data_at + data_len
    if at != stop:
        raise ChunkInconsistent(f"{where}: a connection record at offset {at} overlaps a message")
