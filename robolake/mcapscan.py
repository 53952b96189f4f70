"""Walking an MCAP file record by record, with byte offsets, guards and honest reasons.

The `mcap` package parses each record; this walk adds what an ingest on hostile
input needs and its StreamReader does not give: the byte offset of every record
(so a reason says where), a length check before anything is read (a cut file is
`truncated`, a length that cannot belong to the file is `corrupt`), a bounded
decompression of every chunk (`robolake.inflate`), both CRC levels, and whether
integrity could be verified at all (chunks written without CRCs).

Messages are not decoded: only their channel and log time are read from the
fixed header, straight from the chunk bytes.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from mcap.data_stream import ReadDataStream
from mcap.exceptions import EndOfFile
from mcap.opcode import Opcode
from mcap.records import Channel, Chunk, DataEnd, Metadata, Schema, Statistics

from robolake.inflate import FormatProblem, corrupt, inflate, past_end, truncated

MAGIC = b"\x89MCAP0\r\n"
MAX_RECORD_BYTES = 2**31  # one record; larger is a corrupt length field
_HEAD = struct.Struct("<BQ")  # opcode, record length
_MESSAGE = struct.Struct("<HIQ")  # channel id, sequence, log time
_KNOWN = {int(op) for op in Opcode}


class _Bounded(ReadDataStream):
    """A record's bytes: a field that runs past them is an error, not a short read."""

    def read(self, length: int) -> bytes:
        data = super().read(length)
        if len(data) < length:
            raise EndOfFile()
        return data


@dataclass
class McapWalk:
    size: int
    schemas: dict[int, str] = field(default_factory=dict)  # id -> message type name
    channels: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> topic, schema
    stamps: dict[int, list[int]] = field(default_factory=dict)  # channel -> log times
    identity: dict[str, str] | None = None  # metadata record 'robot'
    statistics: Statistics | None = None
    problem: FormatProblem | None = None  # where reading had to stop
    chunks: int = 0
    chunks_without_crc: int = 0
    data_crc: int = 0  # as written in DataEnd (0: not written)
    complete: bool = False  # footer and closing magic read

    @property
    def integrity_unverified(self) -> str | None:
        """Why flipped bits could go unnoticed in this file, if they could."""
        if self.data_crc:
            return None  # the whole data section is covered
        if self.chunks and self.chunks_without_crc:
            return (f"{self.chunks_without_crc} of {self.chunks} chunks carry no CRC and the "
                    "data section has none (written without checksums, as rosbags-convert "
                    "does)")
        if not self.chunks:
            return "the data section carries no CRC (an unchunked MCAP without checksums)"
        return None


def walk_mcap(path: Path) -> McapWalk:
    """Read every record once; stop at the first structural problem and record it.

    Raises FormatProblem only when the file is not an MCAP at all (wrong magic).
    """
    walk = McapWalk(path.stat().st_size)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise corrupt("not an MCAP file: wrong magic number at byte 0")
        try:
            _walk_records(f, walk)
        except FormatProblem as problem:
            walk.problem = problem
    return walk


def _walk_records(f, walk: McapWalk) -> None:
    pos, crc, size = len(MAGIC), zlib.crc32(MAGIC), walk.size
    while True:
        head = f.read(_HEAD.size)
        if not head:
            raise truncated(f"no MCAP footer: the file ({size} bytes) ends after the record "
                            f"before byte {pos}")
        if len(head) < _HEAD.size:
            raise truncated(f"the file ({size} bytes) ends inside a record header at byte {pos}")
        op, length = _HEAD.unpack(head)
        if op not in _KNOWN and op < 0x80:  # 0x80-0xff: user records, skipped by readers
            raise corrupt(f"corrupt record header at byte {pos}: opcode 0x{op:02x} is not an "
                          "MCAP record")
        what = f"a {_name(op)} record"
        if length > MAX_RECORD_BYTES or length > size - pos - _HEAD.size:
            raise past_end(what, pos, length, size)
        body = f.read(length)
        if op == Opcode.DATA_END:
            _check_data_crc(body, crc, pos, walk)
        else:
            crc = zlib.crc32(body, zlib.crc32(head, crc))
        try:
            _record(op, body, pos, walk)
        except (EndOfFile, struct.error) as exc:
            raise corrupt(f"{what} at byte {pos}: its fields run past its {length} bytes "
                          "(a corrupt length field)") from exc
        except UnicodeDecodeError as exc:
            raise corrupt(f"{what} at byte {pos}: a text field is not UTF-8") from exc
        pos += _HEAD.size + length
        if op == Opcode.FOOTER:
            tail = f.read(len(MAGIC) + 1)
            if tail == MAGIC:
                walk.complete = True
                return
            if len(tail) < len(MAGIC) and MAGIC.startswith(tail):
                raise truncated(f"the file ({size} bytes) ends without the closing MCAP magic")
            raise corrupt(f"the bytes after the footer at byte {pos} are not the closing MCAP "
                          "magic")


def _name(op: int) -> str:
    try:
        return Opcode(op).name.title().replace("_", "")
    except ValueError:
        return f"user (0x{op:02x})"


def _check_data_crc(body: bytes, crc: int, pos: int, walk: McapWalk) -> None:
    written = DataEnd.read(_Bounded(BytesIO(body))).data_section_crc if len(body) >= 4 else 0
    walk.data_crc = written
    if written and written != crc:
        raise corrupt(f"the data section fails its CRC (DataEnd at byte {pos}: expected "
                      f"{written:#010x}, computed {crc:#010x}); the file was damaged in transfer")


def _record(op: int, body: bytes, pos: int, walk: McapWalk) -> None:
    if op == Opcode.MESSAGE:
        _message(body, 0, len(body), walk, f"a Message record at byte {pos}")
    elif op == Opcode.CHUNK:
        _chunk(Chunk.read(_Bounded(BytesIO(body))), pos, walk)
    elif op in (Opcode.SCHEMA, Opcode.CHANNEL):
        _definition_into(op, body, walk)
    elif op == Opcode.METADATA:
        meta = Metadata.read(_Bounded(BytesIO(body)))
        if meta.name == "robot":
            walk.identity = dict(meta.metadata)
    elif op == Opcode.STATISTICS:
        walk.statistics = Statistics.read(_Bounded(BytesIO(body)))


def _chunk(chunk: Chunk, pos: int, walk: McapWalk) -> None:
    where = f"the chunk at byte {pos}"
    data = inflate(chunk.data, chunk.compression, chunk.uncompressed_size, where)
    walk.chunks += 1
    if not chunk.uncompressed_crc:
        walk.chunks_without_crc += 1
    elif zlib.crc32(data) != chunk.uncompressed_crc:
        raise corrupt(f"{where} fails its CRC (expected {chunk.uncompressed_crc:#010x}, "
                      f"computed {zlib.crc32(data):#010x}); the file was damaged in transfer")
    at, end = 0, len(data)
    while at < end:
        if end - at < _HEAD.size:
            raise corrupt(f"{where}: a record header at offset {at} inside it is cut by the "
                          "chunk's end")
        op, length = _HEAD.unpack_from(data, at)
        body_at = at + _HEAD.size
        if length > end - body_at:
            raise corrupt(f"{where}: a {_name(op)} record at offset {at} inside it declares "
                          f"{length} bytes, past the chunk's end")
        if op == Opcode.MESSAGE:
            _message(data, body_at, length, walk, f"{where} (offset {at})")
        elif op in (Opcode.SCHEMA, Opcode.CHANNEL):
            _definition_into(op, data[body_at:body_at + length], walk)
        at = body_at + length


def _message(data: bytes, at: int, length: int, walk: McapWalk, where: str) -> None:
    if length < _MESSAGE.size + 8:  # + publish time
        raise corrupt(f"{where}: a Message record of {length} bytes is shorter than its "
                      "fixed fields")
    channel, _, log_time = _MESSAGE.unpack_from(data, at)
    bucket = walk.stamps.get(channel)
    if bucket is None:
        bucket = walk.stamps[channel] = []
    bucket.append(log_time)


# --------------------------------------------------------------------------- fast messages

_CHUNK_FIXED = struct.Struct("<QQQII")  # start, end, uncompressed size, crc, compression len


@dataclass
class Definitions:
    """Schemas and channels as they appear (or from the summary, for a time slice)."""

    schemas: dict[int, str] = field(default_factory=dict)
    channels: dict[int, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def from_summary(cls, path: Path) -> Definitions:
        from mcap.reader import make_reader

        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
        if summary is None:
            raise ValueError(f"{path.name}: no MCAP summary to slice by")
        return cls({i: s.name for i, s in summary.schemas.items()},
                   {i: (c.topic, c.schema_id) for i, c in summary.channels.items()})

    def msgtype(self, channel: int) -> str:
        topic_schema = self.channels.get(channel)
        return self.schemas.get(topic_schema[1], "") if topic_schema else ""


def iter_messages(path: Path, defs: Definitions, start_ns: int | None = None,
                  end_ns: int | None = None):
    """(channel id, log time, serialized message) for every message, in file order.

    The decode path for files the raw layer accepted: chunks are inflated whole with
    the codec's C library and their records read with `struct` offsets, no record
    objects. With a time range, chunks outside it are skipped undecompressed (their
    channels must then come from the summary: `Definitions.from_summary`).
    """
    with open(path, "rb") as f:
        f.seek(len(MAGIC))
        while True:
            head = f.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return
            op, length = _HEAD.unpack(head)
            if op == Opcode.CHUNK:
                start, end, size, _, name_len = _CHUNK_FIXED.unpack(f.read(_CHUNK_FIXED.size))
                compression = f.read(name_len).decode()
                (data_len,) = struct.unpack("<Q", f.read(8))
                rest = length - _CHUNK_FIXED.size - name_len - 8
                if (start_ns is not None and end < start_ns) or (
                        end_ns is not None and start >= end_ns):
                    f.seek(rest, 1)
                    continue
                data = inflate(f.read(data_len), compression, size, "a chunk")
                f.seek(rest - data_len, 1)
                yield from _chunk_messages(data, defs, start_ns, end_ns)
            elif op in (Opcode.DATA_END, Opcode.FOOTER):
                return
            else:
                body = f.read(length)
                if op == Opcode.MESSAGE:
                    yield from _chunk_messages(head + body, defs, start_ns, end_ns)
                elif op in (Opcode.SCHEMA, Opcode.CHANNEL):
                    _definition_into(op, body, defs)


def _chunk_messages(data: bytes, defs: Definitions, start_ns: int | None, end_ns: int | None):
    at, end, unpack_head, unpack_msg = 0, len(data), _HEAD.unpack_from, _MESSAGE.unpack_from
    lo = -1 if start_ns is None else start_ns
    hi = 2**64 if end_ns is None else end_ns
    while at < end:
        op, length = unpack_head(data, at)
        body = at + 9
        if op == 0x05:  # Message: channel, sequence, log time, publish time, data
            channel, _, log_time = unpack_msg(data, body)
            if lo <= log_time < hi:
                yield channel, log_time, data[body + 22:body + length]
        elif op in (Opcode.SCHEMA, Opcode.CHANNEL):
            _definition_into(op, data[body:body + length], defs)
        at = body + length


def _definition_into(op: int, body: bytes, defs: Definitions | McapWalk) -> None:
    """A Schema or Channel record into `defs.schemas` / `defs.channels`."""
    stream = _Bounded(BytesIO(body))
    if op == Opcode.SCHEMA:
        schema = Schema.read(stream)
        defs.schemas[schema.id] = schema.name
    else:
        channel = Channel.read(stream)
        defs.channels[channel.id] = (channel.topic, channel.schema_id)
