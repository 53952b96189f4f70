"""The black-frame check of a baseline JPEG from its DC coefficients, without decoding it.

A frame is black when no 8x8 luma block of libjpeg-turbo's 1/8-scale decode is brighter
than a threshold. That decode is the 1x1 inverse DCT of each block (jidctred.c,
`jpeg_idct_1x1`): level = range_limit[((dc * q0 + 4) >> 3) & 1023], i.e. dc * q0 / 8 + 128
clamped to 0..255 (wrapping as libjpeg's table does for out-of-range values), with dc the
block's accumulated DC coefficient (cast to int16 as libjpeg stores it) and q0 the luma
quantisation table's DC entry. So the first visible luma block brighter than the threshold
proves "not black", and only the Huffman codes up to it need reading: DC differences are
summed, AC coefficients skipped by their code lengths (several codes per table lookup).

`BlackCheck.decide(jpeg)` answers "not black" at the first bright block, and "black" when
the whole scan (a small frame's) was read within the budget without one; everything else
(no bright block within the first `budget_mcus` MCUs of a larger frame, an unusual or
damaged file) returns None and the caller decides with the full decode, exactly as before.
What is walked: baseline or extended-sequential Huffman, 8-bit, one grey or three YCbCr
components whose luma is the most sampled, one scan holding all components, no restart
intervals, 8-bit quantisation tables, an EOI ending the file. The walker never
raises on hostile bytes: whatever it cannot read is the full decode's to judge.

A header (the tables, frame and scan segments; APPn/COM other than JFIF/Adobe are left
out) is admitted only after one frame with it went through the full decode without error,
with the same size and verdict: libjpeg-turbo's own checks of a header (its warnings are
errors in strict mode) are thus passed before the walker answers for it. A truncated file
(no EOI), a marker or fill byte among the bytes read, or data ending before the deciding
block is complete all go to the full decode, which raises as before. Not seen: damage to
the entropy-coded data that the walker does not read (after the deciding block), or that
still reads as valid codes up to it; the full decode rejected such a frame (and with it the
recording's decode), the walker calls it "not black".
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

import numpy as np

_BAD = 255  # an AC lookup entry for bits that start no code (consumes nothing)
_KEPT_MARKERS = {0xC0, 0xC1, 0xC4, 0xDB, 0xDD, 0xE0, 0xEE}  # the segments a layout depends on
_SKIPPED_MARKERS = set(range(0xE1, 0xF0)) - {0xEE} | {0xFE}  # APPn, COM: libjpeg skips them


def _codes(counts: bytes, symbols: bytes) -> list[tuple[int, int, int]] | None:
    """(code, length, symbol) of a canonical Huffman table; None for one libjpeg-turbo
    rejects (a code of all ones, or too many codes of a length: jdhuff.c)."""
    out, code, at = [], 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            out.append((code, length, symbols[at]))
            code += 1
            at += 1
        if at and code >= (1 << length):
            return None
        if at == len(symbols):
            break
        code <<= 1
    return out


def _dc_table(codes: list[tuple[int, int, int]]) -> array | None:
    """16-bit lookahead -> code length << 4 | magnitude category; 0: no such code."""
    lut = [0] * 65536
    for code, length, sym in codes:
        if sym > 15:
            return None
        lo = code << (16 - length)
        lut[lo: lo + (1 << (16 - length))] = [length << 4 | sym] * (1 << (16 - length))
    return array("H", lut)


def _ac_single(codes: list[tuple[int, int, int]]) -> np.ndarray:
    """16-bit lookahead -> bits of one AC code and its extra bits << 8 | coefficient steps
    (run + 1; 16 for ZRL; 128 for EOB); _BAD: no such code."""
    lut = np.full(65536, _BAD, dtype=np.int64)
    for code, length, sym in codes:
        run, size = sym >> 4, sym & 15
        steps = run + 1 if size else (16 if run == 15 else 128)
        lo = code << (16 - length)
        lut[lo: lo + (1 << (16 - length))] = (length + size) << 8 | steps
    return lut


def _greedy(single: np.ndarray, used: np.ndarray, going: np.ndarray):
    """From bit `used` of each 16-bit pattern on, the whole AC codes (with their extra bits)
    inside the pattern, up to an EOB or 63 coefficient steps: (bits used, steps, EOB read)."""
    v = np.arange(65536, dtype=np.int64)
    steps = np.zeros(65536, dtype=np.int64)
    eob = np.zeros(65536, dtype=bool)
    for _ in range(16):
        e = single[(v << used) & 0xFFFF]
        size, step = e >> 8, e & 255
        ok = going & (e != _BAD) & (used + size <= 16)
        used = np.where(ok, used + size, used)
        eob |= ok & (step == 128)
        steps = np.where(ok & (step != 128), steps + step, steps)
        going = ok & (step != 128) & (steps < 63) & (used < 16)
    return used, steps, eob


def _ac_tables(codes: list[tuple[int, int, int]]) -> tuple[array, array, np.ndarray]:
    """(several codes per lookup, one code per lookup, the latter as an array). A multi
    entry: bits << 8 | 128 if it ends with EOB | coefficient steps before it; where not one
    code fits in the 16 bits, the single entry."""
    single = _ac_single(codes)
    used, steps, eob = _greedy(single, np.zeros(65536, dtype=np.int64),
                               np.ones(65536, dtype=bool))
    multi = np.where(used > 0, used << 8 | np.where(eob, 128, 0) | steps, single)
    return _table(multi, "H"), _table(single, "H"), single


def _block_table(dc_lut: array, ac_single: np.ndarray) -> array:
    """16-bit lookahead -> a whole block (DC code and difference, AC codes to EOB or the
    63rd) when it fits in the 16 bits: (difference + 65536) << 5 | bits; 0 where not.
    Uniform regions (dark frames) are one lookup per block."""
    v = np.arange(65536, dtype=np.int64)
    e = np.asarray(dc_lut, dtype=np.int64)
    size = e & 15
    fits = (e != 0) & ((e >> 4) + size <= 16)
    dc_bits = np.where(fits, (e >> 4) + size, 16)
    extra = (v >> (16 - dc_bits)) & ((1 << size) - 1)
    high = (extra >> np.maximum(size - 1, 0)) & 1
    diff = np.where(size == 0, 0, np.where(high == 1, extra, extra - (1 << size) + 1))
    used, steps, eob = _greedy(ac_single, dc_bits, fits)
    return _table(np.where(fits & (eob | (steps >= 63)), (diff + 65536) << 5 | used, 0), "I")


def _table(values: np.ndarray, typecode: str) -> array:
    """A lookup table as an array of machine ints: a list of 65536 Python ints would hold
    ~2 MB per table; indexing either costs the same."""
    out = array(typecode)
    out.frombytes(values.astype(np.uint16 if typecode == "H" else np.uint32).tobytes())
    return out


def _bright_table(q0: int, max_level: int) -> bytes:
    """dc & 0xFFFF -> 1 when libjpeg-turbo's 1x1 IDCT level of that DC exceeds max_level."""
    dc = np.arange(65536, dtype=np.int64)
    dc = np.where(dc >= 32768, dc - 65536, dc)  # the int16 libjpeg keeps
    idx = ((dc * q0 + 4) >> 3) & 1023
    level = np.select([idx < 128, idx < 512, idx < 896], [idx + 128, 255, 0], idx - 896)
    return (level > max_level).astype(np.uint8).tobytes()


@dataclass
class _Layout:
    """What walking a scan needs, from one header."""

    width: int
    height: int
    mcus_x: int
    mcus_y: int
    # per block of an MCU: (DC table, multi AC table, single AC table, component, luma (h, v)
    # offset in the MCU or None)
    blocks: list[tuple]
    luma_cols: int  # visible luma blocks across and down: ceil(width / 8), ceil(height / 8)
    luma_rows: int
    luma_h: int  # luma blocks per MCU across and down
    luma_v: int
    bright: bytes
    null_mcu: tuple[int, int]  # (bits, pattern) of an MCU of zero DC differences and EOBs
    admitted: bool = False
    banned: bool = False
    arrays: tuple | None = None  # numpy views of the first block's lookup tables (bulk check)


@dataclass
class _Header:
    """The segments before the scan, as read (None where absent)."""

    frame: tuple | None = None  # (height, width, ((id, h, v, quant table), ...))
    quant: dict = None  # table -> DC quantiser
    huff: dict = None  # (0 DC | 1 AC, table) -> (counts, symbols)
    restart: int = 0
    jfif: bool = False
    adobe: int | None = None  # the Adobe transform flag
    scan: tuple | None = None  # ((component id, DC table, AC table), ...)


def _segments(jpeg: bytes) -> tuple[_Header, bytes, int] | None:
    """The header, its key (the segments a layout depends on) and where the entropy-coded
    data starts; None for anything but SOI, known segments and one SOS."""
    if not jpeg.startswith(b"\xff\xd8"):
        return None
    head, kept, pos = _Header(quant={}, huff={}), [], 2
    while True:
        if jpeg[pos] != 0xFF:
            return None
        marker = jpeg[pos + 1]
        (length,) = struct.unpack_from(">H", jpeg, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > len(jpeg):
            return None
        body = jpeg[pos + 4: end]
        if marker == 0xDA:
            kept.append(jpeg[pos: end])
            return (head, b"".join(kept), end) if _read_scan(head, body) else None
        if marker in _KEPT_MARKERS:
            if not _read_segment(head, marker, body):
                return None
            kept.append(jpeg[pos: end])
        elif marker not in _SKIPPED_MARKERS:
            return None
        pos = end


def _read_segment(head: _Header, marker: int, body: bytes) -> bool:
    if marker in (0xC0, 0xC1):
        return head.frame is None and _read_frame(head, body)
    if marker == 0xC4:
        return _read_huffman(head, body)
    if marker == 0xDB:
        return _read_quant(head, body)
    if marker == 0xDD:
        head.restart = struct.unpack(">H", body)[0]
    elif marker == 0xE0:
        head.jfif = head.jfif or (len(body) >= 14 and body.startswith(b"JFIF\0"))
    elif marker == 0xEE and len(body) >= 12 and body.startswith(b"Adobe"):
        head.adobe = body[11]
    return True


def _read_frame(head: _Header, body: bytes) -> bool:
    precision, height, width, n = struct.unpack_from(">BHHB", body)
    if precision != 8 or not height or not width or n not in (1, 3) or len(body) != 6 + 3 * n:
        return False
    comps = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15, body[8 + 3 * i])
                  for i in range(n))
    if not all(1 <= h <= 4 and 1 <= v <= 4 for _, h, v, _ in comps):
        return False
    head.frame = (height, width, comps)
    return True


def _read_huffman(head: _Header, body: bytes) -> bool:
    pos = 0
    while pos < len(body):
        cls, table = body[pos] >> 4, body[pos] & 15
        counts = body[pos + 1: pos + 17]
        total = sum(counts)
        if cls > 1 or table > 3 or len(counts) != 16 or total > 256:
            return False
        symbols = body[pos + 17: pos + 17 + total]
        if len(symbols) != total:
            return False
        head.huff[(cls, table)] = (bytes(counts), bytes(symbols))
        pos += 17 + total
    return True


def _read_quant(head: _Header, body: bytes) -> bool:
    pos = 0
    while pos < len(body):
        precision, table = body[pos] >> 4, body[pos] & 15
        if precision != 0 or table > 3 or pos + 65 > len(body):
            return False  # 16-bit tables: left to the full decode
        head.quant[table] = body[pos + 1]
        pos += 65
    return True


def _read_scan(head: _Header, body: bytes) -> bool:
    n = body[0]
    if len(body) != 4 + 2 * n or body[1 + 2 * n:] != b"\x00\x3f\x00":
        return False  # not sequential (Ss 0, Se 63, Ah = Al = 0)
    head.scan = tuple((body[1 + 2 * i], body[2 + 2 * i] >> 4, body[2 + 2 * i] & 15)
                      for i in range(n))
    return True


def _grey_is_luma(head: _Header, comps: tuple) -> bool:
    """Whether libjpeg-turbo's GRAY output of this frame is its first component as stored
    (jdapimin.c default_decompress_parms): one component, or three it takes for YCbCr."""
    if len(comps) == 1:
        return True
    if head.jfif:
        return True
    if head.adobe is not None:
        return head.adobe == 1
    return tuple(c[0] for c in comps) != (82, 71, 66)  # 'R', 'G', 'B': an RGB JPEG


def _sampling_ok(comps: tuple) -> bool:
    """Luma the most sampled and chroma at 1x1 (444, 422, 420, 440, 411 ...): luma's 1/8
    scale is then the 1x1 IDCT of each luma block."""
    if len(comps) == 1:
        return True
    (_, h, v, _), chroma = comps[0], comps[1:]
    return all(c[1] == c[2] == 1 for c in chroma) and h * v + 2 <= 10


_SHARED_TABLES: dict[tuple, object] = {}


def shared_tables_bytes() -> int:
    """Bytes of the lookup tables this process's checks built (for memory reports)."""
    return sum(memoryview(t).nbytes for luts in _SHARED_TABLES.values() if luts
               for t in (luts if isinstance(luts, tuple) else (luts,))
               if t is not None and not isinstance(t, tuple))


class BlackCheck:
    """The early "not black" of JPEG frames; holds the tables of the headers it has seen."""

    MAX_HEADERS = 64  # distinct headers kept (a recording's cameras repeat theirs)

    def __init__(self, max_level: int, budget_mcus: int = 16, budget_bytes: int = 256) -> None:
        """Walk at most `budget_mcus` MCUs and max(budget_bytes, 1/128 of the entropy-coded
        data) bytes: the Python work on a frame it cannot decide stays small against the
        full decode, which reads all of it in C."""
        self.max_level = max_level
        self.budgets = (budget_mcus, budget_bytes)
        self._recent: list[tuple[bytes, _Layout | None]] = []  # (header bytes, layout), MRU
        self._layouts: dict[bytes, _Layout | None] = {}
        self._admitted: dict[bytes, _Layout] = {}  # header bytes -> an admitted layout
        # lookup tables are a function of the Huffman tables alone: shared by every check in
        # the process, so a worker decoding upload after upload builds them once (~50 ms)
        self._tables = _SHARED_TABLES
        self.disagreed = 0  # headers banned: the walker disagreed with the full decode
        self.admissions = 0  # headers admitted

    def _huffman(self, head: _Header, cls: int, table: int):
        """(key, (lookup tables..., (bits, code) of symbol 0: DC difference 0 or EOB))."""
        key = (cls, *head.huff.get((cls, table), (None, None)))
        if key not in self._tables:
            codes = _codes(key[1], key[2]) if key[1] is not None else None
            zero = next(((size, code) for code, size, sym in codes or () if sym == 0), None)
            if codes is None:
                luts = None
            elif cls == 0:
                dc_lut = _dc_table(codes)
                luts = None if dc_lut is None else (dc_lut,)
            else:
                luts = _ac_tables(codes)
            self._tables[key] = None if luts is None else (*luts, zero)
        return key, self._tables[key]

    def _block_luts(self, head: _Header, dc: int, ac: int) -> tuple | None:
        """((DC, multi AC, single AC, whole-block) lookup tables, (bits, code) of a block of
        DC difference 0 and EOB or None) of a component."""
        (dc_key, dc_luts), (ac_key, ac_luts) = (self._huffman(head, 0, dc),
                                                self._huffman(head, 1, ac))
        if dc_luts is None or ac_luts is None:
            return None
        if (dc_key, ac_key) not in self._tables:
            self._tables[(dc_key, ac_key)] = _block_table(dc_luts[0], ac_luts[2])
        null = (None if dc_luts[-1] is None or ac_luts[-1] is None
                else (dc_luts[-1][0] + ac_luts[-1][0],
                      dc_luts[-1][1] << ac_luts[-1][0] | ac_luts[-1][1]))
        return (dc_luts[0], ac_luts[0], ac_luts[1], self._tables[(dc_key, ac_key)]), null

    def _layout(self, head: _Header) -> _Layout | None:
        if head.frame is None or head.scan is None or head.restart:
            return None
        height, width, comps = head.frame
        if width <= 4 and height <= 4:
            return None  # `jpeg_levels` asks for >= 1x1: a scale above 1/8 gives 1x1 too
        if (tuple(c[0] for c in comps) != tuple(s[0] for s in head.scan)
                or len(set(c[0] for c in comps)) != len(comps)
                or not _grey_is_luma(head, comps) or not _sampling_ok(comps)
                or comps[0][3] not in head.quant):
            return None
        luma_h, luma_v = (comps[0][1], comps[0][2]) if len(comps) > 1 else (1, 1)
        blocks, null = [], [0, 0]  # null: (bits, pattern) of an MCU of null blocks
        for ci, ((_, h, v, _), (_, dc, ac)) in enumerate(zip(comps, head.scan, strict=True)):
            found = self._block_luts(head, dc, ac)
            if found is None:
                return None
            for bv in range(v if len(comps) > 1 else 1):
                for bh in range(h if len(comps) > 1 else 1):
                    blocks.append((*found[0], ci, (bh, bv) if ci == 0 else None))
                    null = ([null[0] + found[1][0], null[1] << found[1][0] | found[1][1]]
                            if found[1] and null[0] >= 0 else [-1, 0])
        cols, rows = -(-width // 8), -(-height // 8)
        return _Layout(width, height, -(-cols // luma_h), -(-rows // luma_v), blocks, cols,
                       rows, luma_h, luma_v,
                       _bright_table(head.quant[comps[0][3]], self.max_level),
                       (null[0], null[1]) if 0 < null[0] <= 64 else (0, 0))

    def _find(self, jpeg: bytes) -> tuple[_Layout, int] | None:
        """The layout of this frame's header and where its entropy-coded data starts."""
        for n, (prefix, layout) in enumerate(self._recent):
            if jpeg.startswith(prefix):
                if n:
                    self._recent.insert(0, self._recent.pop(n))
                return (layout, len(prefix)) if layout is not None else None
        try:
            parsed = _segments(jpeg)
        except (IndexError, struct.error):
            return None
        if parsed is None:
            return None
        head, key, start = parsed
        if key not in self._layouts:
            if len(self._layouts) >= self.MAX_HEADERS:
                self._layouts.clear()
                self._admitted.clear()
                self._tables.clear()
            self._layouts[key] = self._layout(head)
        layout = self._layouts[key]
        self._recent.insert(0, (jpeg[:start], layout))
        del self._recent[8:]
        return (layout, start) if layout is not None else None

    def decide(self, jpeg: bytes) -> tuple[int, int, bool] | None:
        """(width, height, black) of a frame whose header is admitted, when the walker can
        tell: a visible luma block brighter than max_level within the budget (not black), or
        the whole scan read within the budget without one (black). None: the full decode
        decides (then call `confirm` with its answer)."""
        found = self._find(jpeg)
        if found is None or not found[0].admitted:
            return None
        if len(self._admitted) < self.MAX_HEADERS:
            self._admitted.setdefault(jpeg[:found[1]], found[0])
        verdict = _walk(*found, jpeg, *self.budgets)
        return None if verdict is None else (found[0].width, found[0].height, not verdict)

    def bright_first_blocks(self, data: bytes | bytearray, starts: np.ndarray,
                            ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`decide` for many frames at once (data[starts[i]:ends[i]] each), where it is told
        by the first luma block: (told "not black", width, height) per frame. A frame is
        told only when the walker would read the same bits and answer the same (its header
        admitted, its first raw bytes free of markers and its data longer than they are, the
        block inside them); the others are `decide`'s, one by one. Daylight frames mostly
        end here: one pass of numpy over a chunk's frames instead of a walk per frame."""
        told = np.zeros(len(starts), dtype=bool)
        width, height = np.zeros(len(starts), dtype=np.int64), np.zeros(len(starts), np.int64)
        buf = np.frombuffer(data, dtype=np.uint8)
        if not buf.size:
            return told, width, height
        whole_frames = (ends - starts >= 4) & (buf[np.maximum(ends - 2, 0)] == 0xFF) & (
            buf[np.maximum(ends - 1, 0)] == 0xD9)
        for prefix, layout in self._admitted.items():  # (an admitted layout stays so)
            at = starts + len(prefix)  # the entropy-coded data
            rows = np.flatnonzero(~told & whole_frames & (ends - 2 - at > _RAW))
            rows = rows[[data.startswith(prefix, s) for s in starts[rows].tolist()]]
            if rows.size:
                unstuffed, ok = _unstuffed(np.lib.stride_tricks.sliding_window_view(
                    buf, _RAW)[at[rows]])
                rows = rows[ok]
                rows = rows[_first_block_bright(layout, unstuffed[ok])]
                told[rows], width[rows], height[rows] = True, layout.width, layout.height
        return told, width, height

    def confirm(self, jpeg: bytes, width: int, height: int, black: bool) -> None:
        """The full decode's answer for a frame `decide` did not answer: the frame's header
        is admitted when the walker agrees with it (size, and verdict where it has one), and
        banned (always the full decode) when not."""
        found = self._find(jpeg)
        if found is None or found[0].admitted or found[0].banned:
            return
        layout, verdict = found[0], _walk(*found, jpeg, *self.budgets)
        agrees = (layout.width, layout.height) == (width, height) and verdict in (None,
                                                                              not black)
        layout.admitted, layout.banned = agrees, not agrees
        self.disagreed += not agrees
        self.admissions += agrees
        if agrees and len(self._admitted) < self.MAX_HEADERS:
            self._admitted[jpeg[:found[1]]] = layout


# What `bright_first_blocks` reads of a frame's entropy-coded data: _RAW raw bytes, which
# cover all that _Entropy unstuffs before the walker has read _WINDOW bytes (its first
# read of 48, one doubling of 96 and an FF 00 pair's second byte at either cut); the first
# block is told only within the first _WINDOW unstuffed bytes.
_RAW, _WINDOW = 160, 48


def _unstuffed(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first _WINDOW bytes of each row with stuffed zeros removed, rows free of markers
    and fill bytes: an FF followed by anything but 00, or an FF last)."""
    ff = raw == 0xFF
    zero_next = raw[:, 1:] == 0
    ok = ~ff[:, -1] & ~(ff[:, :-1] & ~zero_next).any(axis=1)
    head = _WINDOW + 16  # the window's bytes lie among the first `head` raw ones
    stuffed = ff[:, :head - 1] & zero_next[:, :head - 1]  # the 00 after an FF, at column + 1
    out = raw[:, :_WINDOW].copy()
    rows = np.flatnonzero(stuffed.any(axis=1) & ok)
    if rows.size:  # compact those rows: each kept byte to its place among the kept
        keep = np.ones((rows.size, head), dtype=bool)
        keep[:, 1:] = ~stuffed[rows]
        place = np.cumsum(keep, axis=1, dtype=np.int16) - 1
        ok[rows[place[:, -1] < _WINDOW - 1]] = False  # more than 16 stuffed: not read here
        r, c = np.nonzero(keep & (place < _WINDOW))
        out[rows[r], place[r, c]] = raw[rows[r], c]
    return out, ok


def _first_block_bright(layout: _Layout, data: np.ndarray) -> np.ndarray:
    """Per row of unstuffed entropy-coded bytes: whether the scan's first block (luma, the
    top-left one, always visible) is complete within them and brighter than the threshold.
    `_scan`'s first block, step for step, over all rows at once."""
    if layout.arrays is None:  # views of the walker's tables, not copies
        layout.arrays = tuple(np.frombuffer(t, np.uint16 if t.typecode == "H" else np.uint32)
                              for t in layout.blocks[0][:4])
    tables = layout.arrays

    def look(table: int, bits: np.ndarray) -> np.ndarray:
        return tables[table][bits].astype(np.int32)

    n = len(data)
    wide = np.zeros((n, _WINDOW + 2), dtype=np.int32)
    wide[:, :_WINDOW] = data
    # the 24 bits from each byte on, flat: a 16-bit lookup at bit p is one gather and shift
    bits24 = (wide[:, :-2] << 16 | wide[:, 1:-1] << 8 | wide[:, 2:]).ravel()
    base = np.arange(n, dtype=np.int32) * _WINDOW
    limit = 8 * _WINDOW - 16  # a lookup reads 16 bits that must all be data

    def bits16(rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return (bits24[base[rows] + (pos >> 3)] >> (8 - (pos & 7))) & 0xFFFF

    pos, k = np.zeros(n, dtype=np.int32), np.ones(n, dtype=np.int32)
    ok = np.ones(n, dtype=bool)
    e = look(3, bits16(np.arange(n), pos))  # the whole block in one lookup
    pred = np.where(e != 0, (e >> 5) - 65536, 0)
    pos = np.where(e != 0, e & 31, 0)
    rows = np.flatnonzero(e == 0)  # the DC code, its difference, then the AC codes
    e = look(0, bits16(rows, pos[rows]))
    ok[rows[e == 0]] = False
    rows, e = rows[e != 0], e[e != 0]
    pos[rows] += e >> 4
    s = e & 15
    r = (bits16(rows, pos[rows]) >> (16 - s)) & ((1 << s) - 1)
    pos[rows] += s
    pred[rows] = np.where(s == 0, 0, np.where(r >> np.maximum(s - 1, 0) == 1, r,
                                               r - (1 << s) + 1))
    while rows.size:
        late = pos[rows] > limit
        if late.any():
            ok[rows[late]] = False
            rows = rows[~late]
        v = bits16(rows, pos[rows])
        e = look(1, v)
        t = k[rows] + (e & 255)
        go = t < 64
        if go.all():
            k[rows], pos[rows] = t, pos[rows] + (e >> 8)
            continue
        k[rows[go]], pos[rows[go]] = t[go], pos[rows[go]] + (e[go] >> 8)
        bad = ~go & (e == _BAD)
        ok[rows[bad]] = False
        end = ~go & ~bad & ((((e & 128) != 0) & (t - 128 < 64)) | (t == 64))
        pos[rows[end]] += e[end] >> 8
        one = ~go & ~bad & ~end  # near the block's end: one code
        r1, e1 = rows[one], look(2, v[one])
        pos[r1] += e1 >> 8
        k[r1] += e1 & 255
        rows = np.concatenate([rows[go], r1[((e1 & 128) == 0) & (k[r1] < 64)]])
    bright = np.frombuffer(layout.bright, dtype=np.uint8)
    return ok & (pos <= 8 * _WINDOW) & (bright[pred & 0xFFFF] == 1)


def _walk(layout: _Layout, start: int, jpeg: bytes, budget_mcus: int,
          budget_bytes: int) -> bool | None:
    """True: a visible luma block brighter than the threshold among the first budget_mcus
    MCUs; False: none in the whole scan, read within the budget; None: undecided (also for
    data the walker does not accept)."""
    if not jpeg.endswith(b"\xff\xd9"):
        return None  # truncated (or bytes after the EOI): the full decode's to judge
    try:
        return _scan(layout, _Entropy(jpeg, start, len(jpeg) - 2), budget_mcus,
                     max(budget_bytes, (len(jpeg) - start) // 128))
    except (IndexError, ValueError):  # never expected: read as "undecided"
        return None


class _Entropy:
    """The scan's entropy-coded bytes with the stuffed zeros removed, unstuffed a window at a
    time as the walker reads on; `data` ends in zero padding once `end` is reached."""

    FIRST, PAD = 48, 64

    def __init__(self, jpeg: bytes, start: int, end: int) -> None:
        self.jpeg, self.at, self.end = jpeg, start, end
        self.data, self.real = b"", -1  # real: the length without padding, once known
        self.more(self.FIRST)

    def more(self, want: int) -> bool:
        """Unstuff about `want` more raw bytes; False once nothing is left to read (past the
        data's end, or a marker or fill byte inside it)."""
        if self.real >= 0:
            return False
        cut = min(self.end, self.at + want)
        if cut < self.end and self.jpeg[cut - 1] == 0xFF:
            cut += 1  # never split an FF 00 pair
        data = raw = self.jpeg[self.at:cut]
        if b"\xff" in raw:
            data = raw.replace(b"\xff\x00", b"\xff")
            if len(raw) - len(data) != raw.count(b"\xff"):
                return False  # an FF not followed by 00: a marker or fill inside the scan
        self.at, self.data = cut, self.data + data
        if cut == self.end:
            self.real = len(self.data)
            self.data += bytes(self.PAD)
        return True

    def grow(self, size: int) -> bytes | None:
        """The data, unstuffed to at least `size` bytes; None when it cannot be."""
        while len(self.data) < size:
            if not self.more(max(2 * len(self.data), self.FIRST)):
                return None
        return self.data


def _fill(src: _Entropy, buf: bytes, acc: int, n: int, i: int) -> tuple | None:
    """64 more bits into the accumulator: (buf, acc, n, i); None past the data."""
    if i + 8 > len(buf):
        buf = src.grow(i + 8)
        if buf is None:
            return None
    return buf, ((acc & ((1 << n) - 1)) << 64) | int.from_bytes(buf[i:i + 8], "big"), n + 64, i + 8


def _scan(layout: _Layout, src: _Entropy, budget_mcus: int, budget_bytes: int) -> bool | None:
    """The MCU loop of `_walk`, within both budgets. One function with its state in locals
    on purpose: this is the per-frame hot path (calls and attribute
    reads would cost as much as the decoding). `acc` holds `n` unread bits (>= 32 before
    each lookup); buf[i:] is not yet in acc."""
    blocks, bright, mcus = layout.blocks, layout.bright, layout.mcus_x * layout.mcus_y
    null_bits, null = layout.null_mcu
    buf, acc, n, i = src.data, 0, 0, 0
    if len(buf) >= 16:  # the first 128 bits at once
        acc, n, i = int.from_bytes(buf[:16], "big"), 128, 16
    preds = [0, 0, 0]
    for mcu in range(min(mcus, budget_mcus)):
        if i > budget_bytes:
            return None
        if n < 64 and (got := _fill(src, buf, acc, n, i)) is not None:
            buf, acc, n, i = got
        if (n >= null_bits and null_bits and (acc >> (n - null_bits)) & ((1 << null_bits) - 1)
                == null and not bright[preds[0] & 0xFFFF]):
            n -= null_bits  # an MCU of unchanged DCs and no AC (black): one comparison
            continue
        for dc_lut, multi, single, whole, ci, luma in blocks:
            if n < 32:
                if (got := _fill(src, buf, acc, n, i)) is None:
                    return None
                buf, acc, n, i = got
            e = whole[(acc >> (n - 16)) & 0xFFFF]
            if e:  # the whole block in one lookup
                n -= e & 31
                preds[ci] += (e >> 5) - 65536
            else:
                e = dc_lut[(acc >> (n - 16)) & 0xFFFF]
                if not e:
                    return None
                n, s, k = n - (e >> 4), e & 15, 1
                if s:
                    r = (acc >> (n - s)) & ((1 << s) - 1)
                    n -= s
                    preds[ci] += r if r >> (s - 1) else r - (1 << s) + 1
                while True:  # the AC codes: skipped, several per lookup
                    if n < 32:
                        if (got := _fill(src, buf, acc, n, i)) is None:
                            return None
                        buf, acc, n, i = got
                    e = multi[(acc >> (n - 16)) & 0xFFFF]
                    t = k + (e & 255)
                    if t < 64:
                        k, n = t, n - (e >> 8)
                        continue
                    if e == _BAD:
                        return None
                    if (e & 128 and t - 128 < 64) or t == 64:  # EOB, or up to the 63rd
                        n -= e >> 8
                        break
                    e = single[(acc >> (n - 16)) & 0xFFFF]  # near the block's end: one code
                    n -= e >> 8
                    k += e & 255
                    if e & 128 or k >= 64:
                        break
            if luma is not None and bright[preds[0] & 0xFFFF]:
                my, mx = divmod(mcu, layout.mcus_x)
                if (my * layout.luma_v + luma[1] < layout.luma_rows
                        and mx * layout.luma_h + luma[0] < layout.luma_cols):
                    return True if src.real < 0 or 8 * i - n <= 8 * src.real else None
    # the whole scan read, its data ending in the last byte (libjpeg-turbo rejects more)
    return (False if budget_mcus >= mcus and i <= budget_bytes
            and 0 <= 8 * src.real - (8 * i - n) < 8 else None)
