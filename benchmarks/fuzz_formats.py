"""Fuzzing the recording readers: every mutated file gets a verdict, none crashes.

Seeds: real files from ../shared/data (the converted Husky MCAP, the SICK bag, the
PX4 ULog) and small simulated MCAP and bag files. Hypothesis draws a seed and a
mutation: bit flips (biased to headers), cuts, record length fields, chunk
compression and size fields, decompression bombs, spliced garbage. Each case runs
what the raw layer runs on an upload (`inspect_recording` + `score_recording`,
`probe_recording`) and, when the verdict is usable, what the cleaned layer runs
(`decode_recording`).

unhandled: an exception other than RecordingError escaped the reader, or probing
raised (the raw layer would still quarantine the file, but with a reader's
traceback text instead of a reason). decode_failed: a usable file whose decoding
raised (the cleaned layer reports it as "decode failed" for that upload).

Usage: python benchmarks/fuzz_formats.py [--cases 10000] [--seed 0]
Target: 0 unhandled, peak memory < 1 GB.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from robolake import decode  # noqa: E402
from robolake import recordings as rec  # noqa: E402
from robolake.contract import USABLE_STATUSES  # noqa: E402
from robolake.raw import score_recording  # noqa: E402

NOW_NS = 1_900_000_000 * 10**9
REAL_SEEDS = ("husky_ros2_converted.mcap", "sick_rms1000_lms1000_movement_off.bag",
              "pyulog_sample_log_small_cubeorange.ulg")
INTERESTING_LENGTHS = (0, 1, 7, 8, 9, 255, 4096, 2**16, 2**31 - 1, 2**32 - 1, 2**40, 2**63)
MUTATIONS = ("bitflip", "truncate", "length", "compression", "bomb", "splice")


@dataclass
class Seed:
    name: str
    data: bytes
    length_fields: list[tuple[int, str]]  # (byte offset, struct format) of record lengths
    chunk_fields: list[tuple[int, str, str]]  # (offset, struct format, meaning) in chunk headers


@dataclass
class Tally:
    cases: int = 0
    quarantined: int = 0
    usable: int = 0
    decode_failed: int = 0
    unhandled: list[str] = field(default_factory=list)
    by_mutation: Counter = field(default_factory=Counter)
    peak_rss_mb: float = 0.0
    peak_case: str = ""  # the case that set the peak


# --------------------------------------------------------------------------- seeds


def _mcap_fields(data: bytes) -> tuple[list, list]:
    lengths, chunks, at = [], [], 8
    while at + 9 <= len(data):
        op, length = struct.unpack_from("<BQ", data, at)
        lengths.append((at + 1, "<Q"))
        if op == 0x06:  # Chunk: start, end, uncompressed size, crc, compression length
            body = at + 9
            chunks += [(body + 16, "<Q", "uncompressed_size"), (body + 24, "<I", "crc"),
                       (body + 28, "<I", "compression_length"),
                       (body + 32, "4s", "compression")]
        if op == 0x02:
            break
        at += 9 + length
    return lengths, chunks


def _bag_fields(data: bytes) -> tuple[list, list]:
    lengths, chunks, at = [], [], 13
    while at + 4 <= len(data):
        (hlen,) = struct.unpack_from("<I", data, at)
        header = data[at + 4:at + 4 + hlen]
        lengths.append((at, "<I"))
        if at + 8 + hlen > len(data):
            break
        lengths.append((at + 4 + hlen, "<I"))
        if b"op=\x05" in header:
            for name, fmt in ((b"size=", "<I"), (b"compression=", "3s")):
                i = header.find(name)
                if i >= 0:
                    chunks.append((at + 4 + i + len(name), fmt, name.decode()))
        (dlen,) = struct.unpack_from("<I", data, at + 4 + hlen)
        at += 8 + hlen + dlen
    return lengths, chunks


def _ulog_fields(data: bytes) -> tuple[list, list]:
    lengths, at = [], 16
    while at + 3 <= len(data) and len(lengths) < 5000:
        lengths.append((at, "<H"))
        at += 3 + struct.unpack_from("<H", data, at)[0]
    return lengths, []


def load_seeds(shared_data: Path, workdir: Path) -> list[Seed]:
    from robolake.simulate import RobotIdentity, simulate_recording

    paths = [shared_data / n for n in REAL_SEEDS if (shared_data / n).exists()]
    robot = RobotIdentity("fuzz-000", "amr", "eu-west")
    for fmt in ("mcap", "bag"):
        out = workdir / f"sim.{fmt}"
        simulate_recording(out, robot, 1_780_000_000 * 10**9, 3.0, seed=5, fmt=fmt,
                           lidar_points=64, image_size=(16, 12))
        paths.append(out)
    seeds = []
    for path in paths:
        data = path.read_bytes()
        fmt = rec.detect_format(data[:16])
        fields = {"mcap": _mcap_fields, "bag": _bag_fields, "ulog": _ulog_fields}[fmt](data)
        seeds.append(Seed(path.name, data, *fields))
    return seeds


# --------------------------------------------------------------------------- mutations


@functools.cache
def _zeros(codec: str, mib: int) -> bytes:
    """`mib` MiB of zeros compressed, built a MiB at a time (the harness stays small too)."""
    if codec == "bz2":
        comp = bz2.BZ2Compressor(9)
    else:
        import zstandard

        comp = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(comp.compress(bytes(2**20)) for _ in range(mib)) + comp.flush()


def _bomb(seed: Seed, declared: int, mib: int, where: int) -> bytes:
    """The seed with a chunk that inflates to `mib` MiB of zeros but declares `declared`,
    before its `where`-th record."""
    data = seed.data
    if seed.name.endswith(".bag"):
        payload = _zeros("bz2", mib)
        header = b"".join(struct.pack("<I", len(f)) + f for f in (
            b"op=\x05", b"compression=bz2", b"size=" + struct.pack("<I", declared % 2**32)))
        record = struct.pack("<I", len(header)) + header + struct.pack("<I", len(payload))
        starts = seed.length_fields[::2]  # a record's header length field is its start
        at = starts[where % len(starts)][0] if starts else len(data)
        return data[:at] + record + payload + data[at:]
    payload = _zeros("zstd", mib)
    body = (struct.pack("<QQQI", 0, 0, declared % 2**64, 0) + struct.pack("<I", 4) + b"zstd"
            + struct.pack("<Q", len(payload)) + payload)
    starts = seed.length_fields[1:]  # after the Header record
    at = starts[where % len(starts)][0] - 1 if starts else len(data)
    return data[:at] + b"\x06" + struct.pack("<Q", len(body)) + body + data[at:]


def mutate(seed: Seed, kind: str, draw) -> bytes:
    data = bytearray(seed.data)
    n = len(data)
    if kind == "bitflip":
        for _ in range(draw(st.integers(1, 8))):
            limit = draw(st.sampled_from([min(n, 4096), n]))
            data[draw(st.integers(0, limit - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        return bytes(data[:draw(st.integers(0, n - 1))])
    elif kind == "length" and seed.length_fields:
        at, fmt = draw(st.sampled_from(seed.length_fields))
        width = struct.calcsize(fmt)
        value = draw(st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 2**(8 * width) - 1))
        data[at:at + width] = struct.pack(fmt, value % 2**(8 * width))
    elif kind == "compression" and seed.chunk_fields:
        at, fmt, meaning = draw(st.sampled_from(seed.chunk_fields))
        width = struct.calcsize(fmt)
        if fmt.endswith("s"):
            value = draw(st.sampled_from([b"zstd", b"lz4\x00", b"bz2\x00", b"none", b"\xff" * 4,
                                          b"gzip"]))[:width]
            data[at:at + width] = value
        else:
            value = draw(st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 2**(8 * width) - 1))
            data[at:at + width] = struct.pack(fmt, value % 2**(8 * width))
    elif kind == "bomb":
        declared = draw(st.sampled_from([2**20, 64 * 2**20, 2**40, 1000]) | st.integers(0, 2**32))
        return _bomb(seed, declared, draw(st.sampled_from([1, 16, 300])), draw(st.integers(0, 50)))
    else:  # splice garbage (also the fallback for seeds without the field kind)
        at = draw(st.integers(0, n))
        garbage = draw(st.binary(min_size=1, max_size=64))
        return bytes(data[:at]) + garbage + bytes(data[at + draw(st.integers(0, 64)):])
    return bytes(data)


# --------------------------------------------------------------------------- one case


def judge(path: Path, tally: Tally, label: str) -> None:
    tally.cases += 1
    try:
        rec.probe_recording(path)
        try:
            info = rec.inspect_recording(path)
            verdict = score_recording(info, [], NOW_NS)
        except rec.RecordingError as exc:
            verdict = score_recording(None, [str(exc)], NOW_NS)
    except Exception as exc:  # noqa: BLE001 - counting what escapes is the point
        where = traceback.extract_tb(exc.__traceback__)[-1]
        tally.unhandled.append(f"{label}: {type(exc).__name__}: {exc} "
                               f"({Path(where.filename).name}:{where.lineno})"[:300])
        return
    if verdict.status not in USABLE_STATUSES:
        tally.quarantined += 1
        return
    tally.usable += 1
    if info.format in ("mcap", "bag"):
        try:
            decode.decode_recording(path, "fuzz", workers=1)
        except (MemoryError, RecursionError) as exc:
            tally.unhandled.append(f"{label}: decode {type(exc).__name__}")
        except Exception:  # noqa: BLE001 - the cleaned layer reports these per upload
            tally.decode_failed += 1


def run_cases(shared_data: Path, workdir: Path, cases: int, seed: int) -> Tally:
    seeds = load_seeds(shared_data, workdir)
    tally = Tally()

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        # uniform over seeds and kinds (hypothesis favours the first of a sampled list)
        rnd = random.Random(data.draw(st.integers(0, 2**64 - 1)))
        chosen, kind = rnd.choice(seeds), rnd.choice(MUTATIONS)
        suffix = ".ulg" if chosen.name.endswith(".ulg") else Path(chosen.name).suffix
        path = workdir / f"case{suffix}"
        path.write_bytes(mutate(chosen, kind, data.draw))
        tally.by_mutation[kind] += 1
        label = f"{chosen.name}/{kind}#{tally.cases}"
        judge(path, tally, label)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if rss > tally.peak_rss_mb:
            tally.peak_rss_mb, tally.peak_case = rss, label

    case()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tally = run_cases(args.data, Path(tmp), args.cases, args.seed)
    seconds = time.perf_counter() - started
    print(f"cases        {tally.cases}  ({seconds:.0f} s, {tally.cases / seconds:.1f}/s, 1 core)")
    print(f"quarantined  {tally.quarantined}")
    print(f"usable       {tally.usable}  (decode failed, reported per upload: "
          f"{tally.decode_failed})")
    print(f"unhandled    {len(tally.unhandled)}")
    print(f"peak memory  {tally.peak_rss_mb:.0f} MB  (set by {tally.peak_case})")
    print("mutations    " + ", ".join(f"{k} {v}" for k, v in sorted(tally.by_mutation.items())))
    kinds = Counter(line.split(": ", 1)[1] for line in tally.unhandled)
    for what, n in kinds.most_common(20):
        example = next(line for line in tally.unhandled if line.endswith(what))
        print(f"  {n:>5} x {what}   e.g. {example.split(': ', 1)[0]}")


if __name__ == "__main__":
    main()
