"""MCAP decoding: through the file's message indexes versus scanning its records, same run.

One simulated MCAP (robolake.simulate, the simulator's sensor rates), measured in this
process; the rows run round-robin `--repeat` times and each figure is the median, each
ratio the median of the per-round ratios to that round's floor (the machine may be shared;
the CPU-time ratio, of this process alone, is the steadier one there):

  floor         iterating every record with mcap's StreamReader, no decoding (one core)
  decode/scan   the decode layer fed message by message by the record scan (the fallback
                for files without usable indexes; what every MCAP took before)
  decode/index  the decode layer through the message indexes, as blocks (one core)
  decode/index xN  decode_recording split into N log-time slices in N processes

Usage: python benchmarks/mcap_decode.py [--minutes 10] [--repeat 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robolake import decode  # noqa: E402
from robolake.simulate import RobotIdentity, simulate_recording  # noqa: E402

START = 1_795_766_400_000_000_000


def floor_stream_reader(path: Path) -> None:
    from mcap.stream_reader import StreamReader

    with open(path, "rb") as f:
        for _ in StreamReader(f).records:
            pass


def decode_by_scan(path: Path) -> None:
    columns = decode._SliceColumns()
    for message in decode.iter_sensor_messages(path):
        columns.add(*message)
    columns.decoded("mcap", "ref")


def decode_by_index(path: Path) -> None:
    columns = decode._decode_indexed(path, "mcap", None, None)  # what _decode_slice takes
    assert columns is not None, "the file's index was not used"
    columns.decoded("mcap", "ref")


def decode_parallel(path: Path, workers: int) -> None:
    decode.PARALLEL_MIN_MESSAGES = 1  # split whatever the size: this measures the split
    decode.decode_recording(path, "ref", workers=workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        truth = simulate_recording(Path(tmp), RobotIdentity("robot-bench", "delivery",
                                                            "eu-west"),
                                   START, args.minutes * 60, seed=1)
        path = Path(tmp) / truth["file"]
        n, mb = truth["message_count"], path.stat().st_size / 1e6
        print(f"mcap: {args.minutes:g} min, {n} messages, {mb:.1f} MB; median of "
              f"{args.repeat} rounds")
        rows = {"floor: mcap StreamReader iteration": lambda: floor_stream_reader(path),
                "decode via record scan, 1 core": lambda: decode_by_scan(path),
                "decode via message index, 1 core": lambda: decode_by_index(path),
                f"decode via message index, {args.workers} processes":
                    lambda: decode_parallel(path, args.workers)}
        decode_by_index(path)  # imports and first-use set-up outside the rounds
        wall: dict[str, list[float]] = {name: [] for name in rows}
        cpu: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.repeat):
            for name, fn in rows.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        for name in rows:
            median = statistics.median(wall[name])
            print(f"{name:<42} {median:7.3f} s  {n / median / 1e3:7.1f} K msg/s  "
                  f"{median / mb * 1e3:6.1f} s/GB  {_ratio(wall, name):5.2f}x floor  "
                  + (f"(CPU time {_ratio(cpu, name):4.2f}x)" if "processes" not in name
                     else ""))


def _ratio(seconds: dict[str, list[float]], name: str) -> float:
    """Median over rounds of this row's time over the floor's time in the same round."""
    floors = next(iter(seconds.values()))
    return statistics.median(t / f for t, f in zip(seconds[name], floors, strict=True))


if __name__ == "__main__":
    main()
