"""Guards shared by the format walkers: bounded decompression and problem kinds.

A recording is hostile input. A chunk may declare any uncompressed size and
inflate to more than it declares (a decompression bomb); lengths may point past
the end of the file. The walkers turn each of these into a `FormatProblem`
saying whether the file was cut short (`truncated`) or its bytes are wrong
(`corrupt`), and where.
"""

from __future__ import annotations

import bz2
import functools
import io

# One chunk may inflate to at most this many bytes. Real chunks are 1-10 MB (one raw 8K
# image is 100 MB); a larger declared size is a corrupt field or a decompression bomb.
# Inflating costs up to twice this while the codec's output blocks are joined.
MAX_INFLATED_BYTES = 128 * 2**20


class FormatProblem(Exception):
    """The file breaks its format here; `kind` is 'truncated' or 'corrupt'."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def corrupt(message: str) -> FormatProblem:
    return FormatProblem("corrupt", message)


def truncated(message: str) -> FormatProblem:
    return FormatProblem("truncated", message)


def past_end(what: str, at: int, length: int, size: int) -> FormatProblem:
    """A record at byte `at` declares `length` bytes that the file does not hold: a cut
    file, unless the length could not belong to this file at all (a corrupt field)."""
    if length > size:
        return corrupt(f"{what} at byte {at} declares {length} bytes, more than the whole "
                       f"file ({size} bytes): a corrupt length field")
    return truncated(f"the file ({size} bytes) ends inside {what} at byte {at}, which "
                     f"declares {length} bytes")


def inflate(data: bytes, compression: str, declared: int | None, where: str) -> bytes:
    """Decompress one chunk to exactly its declared size (or, when the caller knows no
    size, to at most the guard), never past the guard."""
    exact = declared is not None
    declared = MAX_INFLATED_BYTES if declared is None else declared
    if declared > MAX_INFLATED_BYTES:
        raise corrupt(f"{where} declares {declared} bytes uncompressed, over the "
                      f"{MAX_INFLATED_BYTES} byte limit (a decompression bomb or a corrupt "
                      "size field)")
    try:
        if compression in ("", "none"):
            out = data
        elif compression == "zstd":
            import zstandard

            if 0 <= zstandard.frame_content_size(data) <= declared:
                # the frame states its size (checked while decoding): one call, no more
                out = zstandard.ZstdDecompressor().decompress(data, max_output_size=declared)
            else:
                with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                    out = _read_at_most(reader, declared + 1)
        elif compression == "lz4":
            import lz4.frame

            out = lz4.frame.LZ4FrameDecompressor().decompress(data, max_length=declared + 1)
        elif compression == "bz2":
            out = bz2.BZ2Decompressor().decompress(data, max_length=declared + 1)
        else:
            raise corrupt(f"{where} names an unknown compression {compression[:40]!r}")
    except FormatProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - each codec raises its own error types
        raise corrupt(f"{where} does not decompress as {compression} "
                      f"({type(exc).__name__}: {str(exc)[:120]})") from exc
    if len(out) > declared:
        raise corrupt(f"{where} inflates past the {declared} bytes it declares "
                      "(a decompression bomb or a corrupt size field)" if exact else
                      f"{where} inflates past the {declared} byte limit (a decompression bomb)")
    if exact and len(out) < declared:
        raise corrupt(f"{where} inflates to {len(out)} bytes but declares {declared}")
    return out


def _read_at_most(reader, limit: int) -> bytes:
    parts, total = [], 0
    while total < limit:
        part = reader.read(limit - total)
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def guard_rosbags() -> None:
    """rosbags inflates a bag's chunks with no bound: give it the guarded codecs."""
    from rosbags.rosbag1 import reader

    for codec in ("bz2", "lz4"):
        reader.decompressors[codec] = functools.partial(_bounded, codec=codec)


def _bounded(data: bytes, codec: str) -> bytes:
    return inflate(data, codec, None, "a bag chunk")
