"""ROS 1 bag decoding: through the bag's index versus scanning its records, same run.

One simulated bag (robolake.simulate, the simulator's sensor rates), measured in this
process, best of `--repeat`:

  floor      iterating every message with rosbags' Reader, no decoding (one core)
  scan       iterating every message with BagScan (the fallback for bags without index)
  index      iterating every sensor message through the index (robolake.bagindex)
  decode/scan   the decode layer fed by BagScan, message by message (one core)
  decode/index  the decode layer through the index, IMU/GPS as byte matrices (one core)
  decode/index xN  decode_recording split into N log-time slices in N processes

Usage: python benchmarks/bag_decode.py [--minutes 15] [--repeat 3] [--workers 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robolake import decode  # noqa: E402
from robolake.bagindex import BagIndex  # noqa: E402
from robolake.bagscan import BagScan  # noqa: E402
from robolake.simulate import RobotIdentity, simulate_recording  # noqa: E402

START = 1_795_766_400_000_000_000


def _best(fn, repeat: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def floor_rosbags(path: Path) -> int:
    from rosbags.rosbag1 import Reader

    with Reader(path) as reader:
        return sum(1 for _ in reader.messages())


def scan_bagscan(path: Path) -> int:
    return sum(1 for _ in BagScan(path).messages())


def iterate_index(path: Path) -> int:
    return sum(1 for _ in decode._indexed_bag_messages(BagIndex.read(path), None, None))


def decode_by_scan(path: Path) -> int:
    columns = decode._SliceColumns()
    for message in decode._scanned_bag_messages(path, None, None):
        columns.add(*message)
    return len(columns.decoded("bag", "ref").imu["ax"])


def decode_by_index(path: Path) -> int:
    return len(decode._decode_slice(path, "ref").imu["ax"])


def decode_parallel(path: Path, workers: int) -> int:
    decode.PARALLEL_MIN_MESSAGES = 1  # split whatever the size: this measures the split
    return len(decode.decode_recording(path, "ref", workers=workers).imu["ax"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        truth = simulate_recording(Path(tmp), RobotIdentity("robot-bench", "delivery",
                                                            "eu-west"),
                                   START, args.minutes * 60, seed=1, fmt="bag")
        path = Path(tmp) / truth["file"]
        messages = BagIndex.read(path).span()[2]
        mb = path.stat().st_size / 1e6
        print(f"bag: {args.minutes:g} min, {messages} messages, {mb:.1f} MB, "
              f"{len(BagIndex.read(path).chunks)} chunks; best of {args.repeat}")
        rows = [("floor: rosbags Reader iteration", lambda: floor_rosbags(path)),
                ("BagScan iteration", lambda: scan_bagscan(path)),
                ("index iteration", lambda: iterate_index(path)),
                ("decode via BagScan, 1 core", lambda: decode_by_scan(path)),
                ("decode via index, 1 core", lambda: decode_by_index(path)),
                (f"decode via index, {args.workers} processes",
                 lambda: decode_parallel(path, args.workers))]
        floor = None
        for name, fn in rows:
            seconds, _ = _best(fn, args.repeat)
            floor = floor or seconds
            print(f"{name:<36} {seconds:7.3f} s  {messages / seconds / 1e3:7.1f} K msg/s  "
                  f"{seconds / mb * 1e3:6.1f} s/GB  {seconds / floor:5.2f}x floor")


if __name__ == "__main__":
    main()
