"""Data skipping: how many of a partition's files a one-robot-hour query reads, on the
table as the cleaned layer writes it (many small files, several robots each; compaction
leaves files above its target as they are, so at this scale the compacted table is the
same), on the same table Z-ordered by (robot_id, ts_ns) with
delta-rs' optimize.z_order, and sorted by (robot_id, ts_ns) as maintenance now does
(robolake.zorder), all in the same run, and how long the query takes on each.

Files are pruned by the Delta log's partition values and min/max statistics
(robolake.zorder.files_for), then read with polars; the same query through polars'
`scan_delta` with the predicate is timed too. The partition is scaled down: the target
file size is set so the partition holds about TARGET_FILES files after the rewrite, as a
full-size partition does at maintenance's 128 MB target.

    python benchmarks/data_skipping.py [robots] [hz] [queries]
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from robolake import zorder
from robolake.simulate.partition_files import HOUR_NS, upload_frames, write_runs
from robolake.storage import open_store
from robolake.tables import open_table

ROBOTS = int(sys.argv[1]) if len(sys.argv) > 1 else 12
HZ = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
QUERIES = int(sys.argv[3]) if len(sys.argv) > 3 else 24
TARGET_FILES = 48
KEY = "cleaned/imu"
DAY_NS = 20_605 * 24 * HOUR_NS  # 2026-06-01 00:00 UTC
PART = {"date": "", "robot_type": "amr", "region": "eu-west"}


def table_bytes(lake) -> int:
    return sum(int(s) for s in zorder.add_actions(open_table(lake, KEY))["size_bytes"])


def query(lake, robot: str, hour: int) -> tuple[int, int, float, float, int]:
    """(files read, files in the partition, seconds pruned+read, seconds scan_delta, rows)."""
    lo = DAY_NS + hour * HOUR_NS
    ranges = {"robot_id": (robot, robot), "ts_ns": (lo, lo + HOUR_NS - 1)}
    started = time.perf_counter()
    files, total = zorder.files_for(open_table(lake, KEY), PART, ranges)
    rows = zorder.read_range(lake, KEY, files, ranges).height
    pruned_s = time.perf_counter() - started
    started = time.perf_counter()
    frame = pl.scan_delta(lake.table_uri(KEY)).filter(
        (pl.col("date") == PART["date"]) & (pl.col("robot_id") == robot)
        & pl.col("ts_ns").is_between(*ranges["ts_ns"]))
    assert frame.collect().height == rows
    return len(files), total, pruned_s, time.perf_counter() - started, rows


def measure(lake, picks) -> dict:
    runs = [min((query(lake, r, h) for _ in range(3)), key=lambda q: q[2]) for r, h in picks]
    fractions = [f / t for f, t, *_ in runs]
    return {"files": runs[0][1], "median_fraction": statistics.median(fractions),
            "max_fraction": max(fractions), "pruned_s": sum(q[2] for q in runs),
            "scan_delta_s": sum(q[3] for q in runs), "rows": [q[4] for q in runs]}


def build(base: Path, date: str, target_files: int) -> tuple[dict, int, int, str]:
    """The partition as written, then copies Z-ordered by delta-rs and sorted by
    maintenance; returns (name -> lake, rows, commits, timings)."""
    written = open_store(base / "written")
    uploads = upload_frames(ROBOTS, 24, HZ, 2, DAY_NS, date)
    commits = write_runs(written, KEY, uploads, per_run=4)
    target = max(table_bytes(written) // target_files, 64 * 1024)
    lakes = {"written": written}
    for name in ("zorder", "sort"):
        shutil.copytree(base / "written", base / name)
        lakes[name] = open_store(base / name)
    timings = []
    for method in ("zorder", "sort"):
        started = time.perf_counter()
        done = zorder.zorder_table(lakes[method], KEY, target, method=method)
        timings.append(f"{method} + check {time.perf_counter() - started:.1f} s")
        assert done.partitions == [PART] and done.rows == sum(f.height for f in uploads)
    expected = zorder.content_checksum(written, KEY, commits - 1)
    for lake in lakes.values():
        assert zorder.content_checksum(lake, KEY, open_table(lake, KEY).version()) == expected
    return lakes, expected[0], commits, f"target file {target} B; " + ", ".join(timings)


def main() -> None:
    os.environ["ROBOLAKE_AUDIT"] = "off"  # measure the tables, not the audit log
    base = Path(tempfile.mkdtemp(prefix="skipping-"))
    date = time.strftime("%Y-%m-%d", time.gmtime(DAY_NS / 1e9))
    PART["date"] = date
    try:
        lakes, rows, commits, built = build(base, date, TARGET_FILES)
        print(f"{ROBOTS} robots x 24 h at {HZ:g} Hz = {rows} rows in {commits} commits; {built}")
        rng = random.Random(1)
        picks = [(f"robot-{rng.randrange(ROBOTS):03d}", rng.randrange(24)) for _ in range(QUERIES)]
        results = {name: measure(lake, picks) for name, lake in lakes.items()}
        assert len({tuple(r["rows"]) for r in results.values()}) == 1  # same answers
        for name, r in results.items():
            print(f"{name:<10} files {r['files']:>4}  read median {r['median_fraction']:6.1%} "
                  f"max {r['max_fraction']:6.1%}  {QUERIES} queries: pruned+read "
                  f"{r['pruned_s']:.3f} s ({results['written']['pruned_s'] / r['pruned_s']:.2f}x"
                  f" faster than written), scan_delta {r['scan_delta_s']:.3f} s "
                  f"({results['written']['scan_delta_s'] / r['scan_delta_s']:.2f}x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
