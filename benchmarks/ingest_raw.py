"""Raw-ingest throughput beside the floor of merely iterating the same files.

Floor: read every record of every file with the `mcap` StreamReader / `rosbags`
Reader, without decoding a message (what any ingest must at least do).
Robolake: `robolake.raw.ingest_partition` for the same files — probe, hash,
validate (CRCs, counts, monotonic times), score, copy and commit to Delta.

Prints MB/s for both and the ratio (target: Robolake >= 0.5 x floor).
Usage: python benchmarks/ingest_raw.py [--robots 6] [--minutes 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robolake import raw  # noqa: E402
from robolake.simulate import simulate_fleet  # noqa: E402
from robolake.storage import open_store  # noqa: E402


def iterate_floor(files: list[Path]) -> int:
    from mcap.stream_reader import StreamReader
    from rosbags.rosbag1 import Reader

    n = 0
    for path in files:
        if path.suffix == ".mcap":
            with open(path, "rb") as f:
                for _ in StreamReader(f).records:
                    n += 1
        elif path.suffix == ".bag":
            with Reader(path) as reader:
                for _ in reader.messages():
                    n += 1
    return n


def ingest(landing_dir: Path, lake_dir: Path) -> int:
    shutil.rmtree(lake_dir, ignore_errors=True)
    results = raw.ingest_landing(open_store(landing_dir), open_store(lake_dir))
    return sum(len(r.new_rows) for r in results.values())


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robots", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="robolake-bench-") as tmp:
        landing_dir = Path(tmp) / "landing"
        simulate_fleet(landing_dir, robots=args.robots, date="2026-11-27", minutes=args.minutes,
                       seed=1)
        half = args.robots // 2
        simulate_fleet(landing_dir / "bags", robots=half, date="2026-11-26",
                       minutes=args.minutes, seed=2, fmt="bag")
        files = sorted(p for p in landing_dir.rglob("*") if p.suffix in (".mcap", ".bag"))
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{len(files)} recordings ({args.robots} MCAP + {half} bag), {mb:.1f} MB")

        floor_best, floor_med = best_of(lambda: iterate_floor(files), args.repeat)
        ours_best, ours_med = best_of(lambda: ingest(landing_dir, Path(tmp) / "lake"),
                                      args.repeat)
        print(f"{'':<34}{'best s':>8}{'MB/s':>9}{'median s':>10}")
        print(f"{'floor: iterate records (no decode)':<34}{floor_best:>8.2f}"
              f"{mb / floor_best:>9.1f}{floor_med:>10.2f}")
        print(f"{'robolake raw ingest':<34}{ours_best:>8.2f}{mb / ours_best:>9.1f}"
              f"{ours_med:>10.2f}")
        ratio = floor_best / ours_best
        print(f"robolake throughput = {ratio:.2f} x floor (target >= 0.5)")


if __name__ == "__main__":
    main()
