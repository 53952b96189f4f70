"""Reading an MCAP file through its message indexes, chunk by chunk, as bagindex does for bags.

The summary section gives the channels and schemas (and its Chunk Index records must list
every chunk of the data section); the MessageIndex records after each chunk give every
message's log time and offset in the inflated chunk, per channel. A chunk is inflated
whole with the codec's C library (`robolake.inflate`, bounded) and its message records
are located with numpy from those offsets, checked against the index as one byte matrix
(opcode, length, channel, log time), with no per-record parsing on the hot path.

The messages handed out are exactly those the record scan (`mcapscan.iter_messages`)
yields, in the same order: the same chunks are inflated (a time slice skips a chunk by
its record's own time range, as the scan does), the indexed records must tile each chunk
(only Schema and Channel records between them, equal to the summary's), and a top-level
walk of the data section's record headers proves that no message lies outside a chunk.
A file without a summary or message indexes, or whose records do not match them, raises
`IndexRejected` (when opened) or `ChunkInconsistent` (before any message of the chunk is
handed out): the caller then scans the file as before.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mcap.exceptions import EndOfFile
from mcap.opcode import Opcode

from robolake.bagindex import ChunkInconsistent, ChunkMessages, IndexRejected, byte_windows
from robolake.inflate import FormatProblem, inflate
from robolake.mcapscan import _CHUNK_FIXED, _HEAD, MAGIC, Definitions, _definition_into

_U64 = struct.Struct("<Q")
_INDEX_HEAD = struct.Struct("<HI")  # MessageIndex: channel id, byte length of its entries
_ENTRY = np.dtype([("log", "<u8"), ("offset", "<u8")])
_MESSAGE_FIXED = 31  # opcode, length, channel, sequence, log time, publish time
_DEFINITION_ERRORS = (EndOfFile, struct.error, ValueError, KeyError)

__all__ = ["ChunkInconsistent", "ChunkMessages", "IndexRejected", "McapChunk", "McapIndex"]


@dataclass
class McapChunk:
    """One Chunk record: its own fields and where its MessageIndex records are."""

    pos: int
    start_ns: int  # message start / end time, from the chunk record (the scan skips by them)
    end_ns: int
    size: int  # inflated
    compression: str
    data_at: int
    data_len: int
    index_at: int
    index_len: int = 0


@dataclass
class McapIndex:
    path: Path
    size: int
    schemas: dict[int, str]  # id -> message type name
    channels: dict[int, tuple[str, int]]  # id -> topic, schema id
    chunks: list[McapChunk]
    definitions: list[tuple[int, int, int]] = field(default_factory=list)  # top level: pos,op,id
    inflated: int = 0  # chunks inflated so far

    @classmethod
    def read(cls, path: Path) -> McapIndex:
        size = path.stat().st_size
        with open(path, "rb") as f:
            try:
                defs, chunk_starts = _summary(f)
                chunks, definitions = _walk(f, size, defs)
                if {c.pos for c in chunks} != chunk_starts:
                    raise ValueError("the summary's Chunk Index records do not list the file's "
                                     "chunks")
            except (FormatProblem, ValueError, KeyError, struct.error) as exc:
                raise IndexRejected(f"{path.name}: {exc}") from exc
        return cls(path, size, defs.schemas, defs.channels, chunks, definitions)

    def msgtype(self, channel: int) -> str:
        topic_schema = self.channels.get(channel)
        return self.schemas.get(topic_schema[1], "") if topic_schema else ""

    def chunk_messages(self, conns: set[int], start_ns: int | None = None,
                       end_ns: int | None = None) -> Iterator[ChunkMessages]:
        """Per chunk holding a wanted message, its messages of channels `conns` logged in
        [start_ns, end_ns), in file order; every chunk the scan would read is read and
        checked against its index."""
        sliced = start_ns is not None or end_ns is not None
        first_use = None if sliced else _FirstUse(self.definitions, self.channels, conns)
        wanted = np.fromiter(conns, dtype=np.uint32, count=len(conns))
        with open(self.path, "rb") as f:
            for chunk in self.chunks:
                if (start_ns is not None and chunk.end_ns < start_ns) or (
                        end_ns is not None and chunk.start_ns >= end_ns):
                    continue  # outside the slice by its own record, as the scan skips it
                plain, conn, log, offset = self._read_chunk(f, chunk)
                where = f"{self.path.name}: the chunk at byte {chunk.pos}"
                data_at, data_len, defined = _locate(plain, conn, log, offset, self, where)
                if first_use is not None:
                    first_use.check(chunk.pos, conn, offset, defined, where)
                keep = np.isin(conn, wanted)
                if start_ns is not None:
                    keep &= log >= start_ns
                if end_ns is not None:
                    keep &= log < end_ns
                rows = np.flatnonzero(keep)
                if len(rows):
                    yield ChunkMessages(plain, conn[rows], log[rows], data_at[rows],
                                        data_len[rows])

    def _read_chunk(self, f, chunk: McapChunk) -> tuple[bytes, np.ndarray, np.ndarray,
                                                         np.ndarray]:
        """(inflated chunk, channel, log time, offset of its indexed messages by offset)."""
        where = f"{self.path.name}: the chunk at byte {chunk.pos}"
        f.seek(chunk.data_at)
        try:
            plain = inflate(f.read(chunk.data_len), chunk.compression, chunk.size, where)
        except FormatProblem as exc:  # the scan raises its own verdict on this chunk
            raise ChunkInconsistent(str(exc)) from exc
        self.inflated += 1
        f.seek(chunk.index_at)
        conn, entries = _index_entries(f.read(chunk.index_len), where)
        if (entries["log"] >= 2**63).any():
            raise ChunkInconsistent(f"{where}: a message index log time is past 2^63")
        order = np.argsort(entries["offset"], kind="stable")
        return (plain, conn[order], entries["log"][order].astype(np.int64),
                entries["offset"][order])


# --------------------------------------------------------------------------- opening


def _summary(f) -> tuple[Definitions, set[int]]:
    """The summary's schemas and channels, and where its Chunk Index records say chunks are."""
    from mcap.reader import make_reader

    try:
        summary = make_reader(f).get_summary()
    except Exception as exc:  # noqa: BLE001 - the mcap reader raises its own error types
        raise ValueError(f"its summary does not read ({type(exc).__name__}: "
                         f"{str(exc)[:120]})") from exc
    if summary is None:
        raise ValueError("no summary section (footer summary_start 0)")
    if not summary.chunk_indexes:
        raise ValueError("its summary has no Chunk Index records")
    defs = Definitions({i: s.name for i, s in summary.schemas.items()},
                       {i: (c.topic, c.schema_id) for i, c in summary.channels.items()})
    return defs, {c.chunk_start_offset for c in summary.chunk_indexes}


def _walk(f, size: int, defs: Definitions) -> tuple[list[McapChunk], list[tuple[int, int, int]]]:
    """The data section's records by their headers, as the scan meets them: chunks with the
    MessageIndex records after them; no Message outside a chunk; definitions as in the
    summary."""
    f.seek(0)
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not an MCAP file: wrong magic number at byte 0")
    chunks: list[McapChunk] = []
    definitions = []
    pos = len(MAGIC)
    while True:
        f.seek(pos)
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            break
        op, length = _HEAD.unpack(head)
        if op in (Opcode.DATA_END, Opcode.FOOTER):
            break
        if length > size - pos - _HEAD.size:
            raise ValueError(f"the record at byte {pos} runs past the file's end")
        if op == Opcode.MESSAGE:
            raise ValueError(f"the Message record at byte {pos} lies outside any chunk")
        if op == Opcode.CHUNK:
            chunks.append(_chunk_record(f, pos, length))
        elif op == Opcode.MESSAGE_INDEX:
            if not chunks or chunks[-1].index_at + chunks[-1].index_len != pos:
                raise ValueError(f"the MessageIndex record at byte {pos} follows no chunk")
            chunks[-1].index_len += _HEAD.size + length
        elif op in (Opcode.SCHEMA, Opcode.CHANNEL):
            definitions.append((pos, *_definition(op, f.read(length), defs)))
        pos += _HEAD.size + length
    if not any(c.index_len for c in chunks):
        raise ValueError("its chunks have no MessageIndex records")
    return chunks, definitions


def _chunk_record(f, pos: int, length: int) -> McapChunk:
    start, end, size, _crc, name_len = _CHUNK_FIXED.unpack(f.read(_CHUNK_FIXED.size))
    if _CHUNK_FIXED.size + name_len + 8 > length:
        raise ValueError(f"the chunk at byte {pos}: its compression name runs past the record")
    compression = f.read(name_len).decode()
    (data_len,) = _U64.unpack(f.read(8))
    data_at = pos + _HEAD.size + _CHUNK_FIXED.size + name_len + 8
    if data_at + data_len > pos + _HEAD.size + length:
        raise ValueError(f"the chunk at byte {pos}: its records run past the record")
    return McapChunk(pos, start, end, size, compression, data_at, data_len,
                     pos + _HEAD.size + length)


def _definition(op: int, body: bytes, defs: Definitions) -> tuple[int, int]:
    """(op, id) of a Schema or Channel record, which must say what the summary says."""
    one = Definitions()
    try:
        _definition_into(op, body, one)
    except _DEFINITION_ERRORS as exc:
        raise ValueError(f"a {Opcode(op).name.title()} record does not read: {exc}") from exc
    for ident, name in one.schemas.items():
        if defs.schemas.get(ident) != name:
            raise ValueError(f"schema {ident} ({name!r}) differs from the summary's")
        return op, ident
    for ident, channel in one.channels.items():
        if defs.channels.get(ident) != channel:
            raise ValueError(f"channel {ident} ({channel[0]!r}) differs from the summary's")
        return op, ident
    raise ValueError("an empty definition record")


# --------------------------------------------------------------------------- inside a chunk


def _index_entries(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(channel, (log time, offset) entries) of a chunk's MessageIndex records."""
    conns, parts, at = [], [], 0
    while at < len(data):
        _, length = _HEAD.unpack_from(data, at)
        body = at + _HEAD.size
        if length < _INDEX_HEAD.size:
            raise ChunkInconsistent(f"{where}: its MessageIndex record at byte offset {at} "
                                    "is shorter than its fields")
        channel, n_bytes = _INDEX_HEAD.unpack_from(data, body)
        if n_bytes % _ENTRY.itemsize or _INDEX_HEAD.size + n_bytes > length:
            raise ChunkInconsistent(f"{where}: the MessageIndex record of channel {channel} "
                                    "has a broken entry array")
        entries = np.frombuffer(data, dtype=_ENTRY, count=n_bytes // _ENTRY.itemsize,
                                offset=body + _INDEX_HEAD.size)
        parts.append(entries)
        conns.append(np.full(len(entries), channel, dtype=np.uint32))
        at = body + length
    if not parts:
        return np.empty(0, dtype=np.uint32), np.empty(0, dtype=_ENTRY)
    return np.concatenate(conns), np.concatenate(parts)


def _locate(plain: bytes, conn: np.ndarray, log: np.ndarray, offset: np.ndarray,
            defs: McapIndex, where: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(data start, data length) of every indexed message and the definitions between them;
    raises ChunkInconsistent unless each entry is a Message record of its channel and log
    time and the records (with only Schema / Channel records between them) fill the chunk."""
    end, n = len(plain), len(offset)
    if n and (end < _MESSAGE_FIXED or offset[-1] > end - _MESSAGE_FIXED):
        raise ChunkInconsistent(f"{where}: a message index offset lies outside the chunk")
    at = offset.astype(np.int64)
    if n:
        buf = np.frombuffer(plain, dtype=np.uint8)
        head = byte_windows(buf, _MESSAGE_FIXED)[at]
        length = head[:, 1:9].copy().view("<u8").ravel()
        bad = ((head[:, 0] != int(Opcode.MESSAGE)) | (length < 22)
               | (length > (end - _HEAD.size - at).astype(np.uint64))
               | (head[:, 9:11].copy().view("<u2").ravel() != conn)
               | (head[:, 15:23].copy().view("<u8").ravel() != log.astype(np.uint64)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ChunkInconsistent(f"{where}: the record at offset {at[i]} is not the Message "
                                    f"its index entry names (channel {conn[i]}, log time "
                                    f"{log[i]})")
        length = length.astype(np.int64)
    else:
        length = np.empty(0, dtype=np.int64)
    rec_end = at + _HEAD.size + length
    if (at[1:] < rec_end[:-1]).any():
        raise ChunkInconsistent(f"{where}: indexed message records overlap")
    starts, stops = np.concatenate([[0], rec_end]), np.concatenate([at, [end]])
    defined = []
    for a in np.flatnonzero(starts != stops).tolist():  # gaps: definitions only
        defined += _definitions_only(plain, int(starts[a]), int(stops[a]), defs, where)
    return at + _MESSAGE_FIXED, length - 22, defined


def _definitions_only(plain: bytes, at: int, stop: int, defs: McapIndex,
                      where: str) -> list[tuple[int, int, int]]:
    found = []
    while at < stop:
        if stop - at < _HEAD.size:
            raise ChunkInconsistent(f"{where}: bytes at offset {at} belong to no record")
        op, length = _HEAD.unpack_from(plain, at)
        if length > stop - at - _HEAD.size:
            raise ChunkInconsistent(f"{where}: the record at offset {at} overlaps a message")
        if op == Opcode.MESSAGE:
            raise ChunkInconsistent(f"{where}: the Message record at offset {at} is not in "
                                    "its message index")
        if op in (Opcode.SCHEMA, Opcode.CHANNEL):
            try:
                found.append((at, *_definition(op, plain[at + 9:at + 9 + length], defs)))
            except ValueError as exc:
                raise ChunkInconsistent(f"{where}, offset {at}: {exc}") from exc
        at += _HEAD.size + length
    return found


class _FirstUse:
    """Read whole, the scan learns a channel's type from the Schema and Channel records met
    before its first message: each wanted channel's first message must come after both."""

    def __init__(self, top_level: list[tuple[int, int, int]], channels: dict, wanted: set[int]):
        self.top_level, self.next = top_level, 0
        self.channels, self.pending = channels, set(wanted)
        self.seen: set[tuple[int, int]] = set()

    def check(self, pos: int, conn: np.ndarray, offset: np.ndarray,
              in_chunk: list[tuple[int, int, int]], where: str) -> None:
        while self.next < len(self.top_level) and self.top_level[self.next][0] < pos:
            self.seen.add(self.top_level[self.next][1:])
            self.next += 1
        channels, first = np.unique(conn, return_index=True)
        for channel, i in zip(channels.tolist(), first.tolist(), strict=True):
            if channel not in self.pending:
                continue
            before = self.seen | {d[1:] for d in in_chunk if d[0] < offset[i]}
            schema = self.channels[channel][1]
            if (Opcode.CHANNEL, channel) not in before or (Opcode.SCHEMA, schema) not in before:
                raise ChunkInconsistent(f"{where}: channel {channel}'s first message comes "
                                        "before its Channel or Schema record")
            self.pending.discard(channel)
        self.seen.update(d[1:] for d in in_chunk)
