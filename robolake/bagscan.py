"""Reading a ROS 1 bag (v2.0) by scanning its chunks in order, as `rosbag reindex` does.

`rosbags` reads a bag through the index at its end. Bags whose writer died
(`.bag.active`: no index), bags with an old or damaged index (rosbags raises a
bare AssertionError on index records it does not expect) still hold their
messages in chunks; this scan reads them front to back without the index.

Record layout (http://wiki.ros.org/Bags/Format/2.0): `<header length u32>
<header: fields <length u32><name>=<value>> <data length u32> <data>`; chunk data
is a run of connection and message records, compressed with none, bz2 or lz4.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from robolake.inflate import FormatProblem, corrupt, guard_rosbags, inflate, past_end, truncated

guard_rosbags()  # every reader of bags in this process inflates within the guard

MAGIC = b"#ROSBAG V2.0\n"
OP_MESSAGE, OP_BAG_HEADER, OP_INDEX, OP_CHUNK, OP_CHUNK_INFO, OP_CONNECTION = 2, 3, 4, 5, 6, 7
_U32 = struct.Struct("<I")
_TIME = struct.Struct("<II")  # sec, nsec


@dataclass(frozen=True)
class BagConnection:
    id: int
    topic: str
    msgtype: str  # ROS 1 spelling, e.g. sensor_msgs/Imu


@dataclass
class BagScan:
    """One pass over the records; `problem` says where reading had to stop."""

    path: Path
    size: int = 0
    index_pos: int | None = None  # from the bag header; 0 for a bag that was not closed
    connections: dict[int, BagConnection] = field(default_factory=dict)
    problem: FormatProblem | None = None

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(connection id, log time ns, serialized message) in file order.

        Connections are known by the time their first message is yielded. A problem
        ends the iteration and is kept in `problem`.
        """
        self.size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise corrupt("not a ROS 1 bag v2.0: wrong magic line at byte 0")
            try:
                yield from self._records(f)
            except FormatProblem as problem:
                self.problem = problem

    def _records(self, f) -> Iterator[tuple[int, int, bytes]]:
        pos = len(MAGIC)
        while pos < self.size:
            header, data = _read_record(f, pos, self.size)
            op = _op(header, f"the record at byte {pos}")
            if op == OP_BAG_HEADER:
                self.index_pos = _u64(header, b"index_pos", pos)
            elif op == OP_CHUNK:
                compression = header.get(b"compression", b"none").decode("ascii", "replace")
                where = f"the chunk at byte {pos}"
                plain = inflate(data, compression, _u32(header, b"size", pos), where)
                yield from self._chunk_records(plain, where)
            elif op == OP_CONNECTION:
                self._connection(header, data, pos)
            elif op == OP_MESSAGE:
                yield _message(header, data, self.connections, pos)
            pos = f.tell()

    def _chunk_records(self, plain: bytes, where: str) -> Iterator[tuple[int, int, bytes]]:
        # offsets into the inflated chunk, no per-record objects: this is the decode path
        at, end, unpack = 0, len(plain), _U32.unpack_from
        while at < end:
            if end - at < 8:
                raise corrupt(f"{where}: a record at offset {at} inside it is cut by its end")
            (header_len,) = unpack(plain, at)
            data_at = at + 8 + header_len
            data_len = unpack(plain, data_at - 4)[0] if data_at <= end else 0
            if data_at > end or data_at + data_len > end:
                raise corrupt(f"{where}: a record at offset {at} inside it runs past its end")
            op, conn, time = _message_fields(plain, at + 4, data_at - 4)
            if op == OP_MESSAGE and conn is not None and time is not None:
                if conn not in self.connections:
                    raise corrupt(f"{where}: the message at offset {at} belongs to connection "
                                  f"{conn}, which no connection record before it defines")
                yield conn, time, plain[data_at:data_at + data_len]
            elif op == OP_CONNECTION:
                header = _fields(plain[at + 4:data_at - 4], f"{where}, offset {at}")
                self._connection(header, plain[data_at:data_at + data_len], at)
            elif op is None or op == OP_MESSAGE:
                raise corrupt(f"{where}: the record at offset {at} inside it has no op, conn "
                              "or time field")
            at = data_at + data_len

    def _connection(self, header: dict[bytes, bytes], data: bytes, pos: int) -> None:
        conn = _u32(header, b"conn", pos)
        if conn in self.connections:
            return  # the index section repeats every connection
        fields = _fields(data, f"the connection header at byte {pos}")
        topic = header.get(b"topic") or fields.get(b"topic", b"")
        msgtype = fields.get(b"type")
        if msgtype is None:
            raise corrupt(f"the connection record at byte {pos} names no message type")
        self.connections[conn] = BagConnection(conn, topic.decode("utf-8", "replace"),
                                               msgtype.decode("utf-8", "replace"))


def _message_fields(buf: bytes, at: int, end: int) -> tuple[int | None, int | None, int | None]:
    """(op, conn, time ns) of a record header at buf[at:end]; None where a field is absent
    or malformed (the caller decides)."""
    op = conn = time = None
    while at < end:
        (n,) = _U32.unpack_from(buf, at)
        field_at, at = at + 4, at + 4 + n
        if at > end:
            return None, None, None
        if n == 4 and buf.startswith(b"op=", field_at):
            op = buf[field_at + 3]
        elif n == 9 and buf.startswith(b"conn=", field_at):
            (conn,) = _U32.unpack_from(buf, field_at + 5)
        elif n == 13 and buf.startswith(b"time=", field_at):
            sec, nsec = _TIME.unpack_from(buf, field_at + 5)
            time = sec * 1_000_000_000 + nsec
    return op, conn, time


def _read_record(f, pos: int, size: int) -> tuple[dict[bytes, bytes], bytes]:
    header_len = _length(f, pos, size, "header")
    header = _fields(f.read(header_len), f"the record header at byte {pos}")
    data_len = _length(f, f.tell(), size, "data")
    return header, f.read(data_len)


def _length(f, pos: int, size: int, what: str) -> int:
    raw = f.read(4)
    if len(raw) < 4:
        raise truncated(f"the file ({size} bytes) ends inside the length of a record's {what} "
                        f"at byte {pos}")
    (length,) = _U32.unpack(raw)
    if length > size - pos - 4:
        raise past_end(f"a record's {what}", pos, length, size)
    return length


def _fields(blob: bytes, where: str) -> dict[bytes, bytes]:
    fields, at = {}, 0
    while at < len(blob):
        if len(blob) - at < 4:
            raise corrupt(f"{where}: a field length is cut by the header's end")
        (n,) = _U32.unpack_from(blob, at)
        item = blob[at + 4:at + 4 + n]
        if len(item) < n or b"=" not in item:
            raise corrupt(f"{where}: a field at offset {at} is not <length><name>=<value>")
        name, _, value = item.partition(b"=")
        fields[name] = value
        at += 4 + n
    return fields


def _op(header: dict[bytes, bytes], where: str) -> int:
    op = header.get(b"op")
    if op is None or len(op) != 1:
        raise corrupt(f"{where} has no one-byte op field")
    return op[0]


def _u32(header: dict[bytes, bytes], name: bytes, pos: int) -> int:
    value = header.get(name)
    if value is None or len(value) != 4:
        raise corrupt(f"the record at byte {pos} has no 4-byte {name.decode()} field")
    return _U32.unpack(value)[0]


def _u64(header: dict[bytes, bytes], name: bytes, pos: int) -> int:
    value = header.get(name)
    if value is None or len(value) != 8:
        raise corrupt(f"the record at byte {pos} has no 8-byte {name.decode()} field")
    return struct.unpack("<Q", value)[0]


def _message(header: dict[bytes, bytes], data: bytes, connections: dict[int, BagConnection],
             pos: int) -> tuple[int, int, bytes]:
    conn = _u32(header, b"conn", pos)
    if conn not in connections:
        raise corrupt(f"the message at byte {pos} belongs to connection {conn}, which no "
                      "connection record before it defines")
    time = _u64(header, b"time", pos)
    sec, nsec = time & 0xFFFFFFFF, time >> 32
    return conn, sec * 1_000_000_000 + nsec, data
