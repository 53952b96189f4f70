"""Alignment and the whole cleaned layer for one robot-hour, each against baselines.

(a) Alignment alone on already-decoded columns (IMU 100 Hz, LiDAR 10 Hz, camera
    30 Hz, GPS 1 Hz): Robolake's numpy implementation, a pandas `merge_asof`
    baseline and DuckDB's `ASOF JOIN`. All three must agree; each runs in a
    fresh process so its peak memory (RSS growth) is its own.
(b) The cleaned layer for one simulated robot-hour recording (decode, clean,
    align, write Delta as the engines do: part files and a keyed commit per table) on
    one core (ROBOLAKE_DECODE_WORKERS=1) and on all cores, beside the floor of
    iterating the same file's records with the `mcap` StreamReader without decoding
    (one core), all in the same run, in rounds (floor, 1 core, all cores; in-process,
    then whole process) so that the machine's drifting speed hits all alike: medians over
    the rounds, and medians of the rounds' ratios. In-process: in this process, after one
    warm-up run (the decode workers and lookup tables warm, as a step cleaning upload
    after upload has them). Whole process: a fresh interpreter per run, imports and
    worker start-up included, for ours and for the floor.
    Target: <= 1.0x the floor per core.

Usage: python benchmarks/align.py [--minutes 60] [--skip-b] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robolake.cleaned import align_arrays  # noqa: E402
from robolake.contract import CAMERA_MATCH_NS, IMU_HALF_WINDOW_NS  # noqa: E402

START = 1_795_766_400_000_000_000


def synthetic(minutes: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    secs = minutes * 60

    def grid(hz: float, jitter_ns: int) -> np.ndarray:
        n = int(secs * hz)
        t = START + (np.arange(n) * (1e9 / hz)).astype(np.int64)
        return np.sort(t + rng.integers(-jitter_ns, jitter_ns + 1, n))

    imu_ts, gps_ts = grid(100, 200_000), grid(1, 5_000_000)
    return {
        "lidar_ts": grid(10, 2_000_000),
        "camera_ts": grid(30, 3_000_000),
        "imu_ts": imu_ts,
        "imu_values": rng.normal(size=(imu_ts.size, 6)),
        "gps_ts": gps_ts,
        "gps_values": np.column_stack([53.35 + np.cumsum(rng.normal(0, 1e-5, gps_ts.size)),
                                       -6.26 + np.cumsum(rng.normal(0, 1e-5, gps_ts.size)),
                                       20 + rng.normal(0, 0.1, gps_ts.size)]),
    }


def robolake_align(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    a = align_arrays(d["lidar_ts"], d["camera_ts"], d["imu_ts"], d["imu_values"], d["gps_ts"],
                     d["gps_values"])
    return {"camera_ts": np.where(a["has_camera"], a["camera_ts_ns"], -1),
            "imu": a["imu"], "imu_count": a["imu_count"], "gps": a["gps"]}


def pandas_align(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import pandas as pd

    lidar = pd.DataFrame({"t": d["lidar_ts"]})
    cams = pd.DataFrame({"t": d["camera_ts"], "cam": d["camera_ts"]})
    # nearest camera frame with |dt| < 16 ms (tolerance is inclusive: 16 ms - 1 ns)
    cam = pd.merge_asof(lidar, cams, on="t", direction="nearest",
                        tolerance=CAMERA_MATCH_NS - 1)["cam"]
    # IMU window [t - 50 ms, t + 50 ms): cumulative sums looked up as-of each edge
    cols = [f"v{i}" for i in range(6)]
    cum = pd.DataFrame(np.cumsum(d["imu_values"], axis=0), columns=cols)
    cum["n"] = np.arange(1, len(cum) + 1)
    cum["t"] = d["imu_ts"]
    zero = pd.DataFrame([[0.0] * 6 + [0, np.iinfo(np.int64).min]], columns=[*cols, "n", "t"])
    cum = pd.concat([zero, cum], ignore_index=True)

    def before(edge: np.ndarray) -> pd.DataFrame:  # cumulative sums over samples < edge
        q = pd.DataFrame({"t": edge - 1})
        return pd.merge_asof(q, cum, on="t", direction="backward")

    hi, lo = before(d["lidar_ts"] + IMU_HALF_WINDOW_NS), before(d["lidar_ts"] - IMU_HALF_WINDOW_NS)
    count = (hi["n"] - lo["n"]).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        imu = (hi[cols].to_numpy() - lo[cols].to_numpy()) / count[:, None]
    imu[count == 0] = np.nan
    # GPS: bracketing fixes as-of backward and forward, then linear interpolation
    gps = pd.DataFrame(d["gps_values"], columns=["lat", "lon", "alt"])
    gps["t"] = gps["tg"] = d["gps_ts"]
    b = pd.merge_asof(lidar, gps, on="t", direction="backward")
    f = pd.merge_asof(lidar, gps, on="t", direction="forward")
    span = (f["tg"] - b["tg"]).to_numpy(dtype=np.float64)
    w = np.divide((lidar["t"] - b["tg"]).to_numpy(dtype=np.float64), span,
                  out=np.zeros_like(span), where=span > 0)
    pos = b[["lat", "lon", "alt"]].to_numpy() + (
        f[["lat", "lon", "alt"]].to_numpy() - b[["lat", "lon", "alt"]].to_numpy()) * w[:, None]
    return {"camera_ts": cam.fillna(-1).astype(np.int64).to_numpy(), "imu": imu,
            "imu_count": count, "gps": pos}


def duckdb_align(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.register("lidar", pa.table({"t": d["lidar_ts"]}))
    con.register("cam", pa.table({"tc": d["camera_ts"]}))
    cum = np.vstack([np.zeros((1, 6)), np.cumsum(d["imu_values"], axis=0)])
    con.register("imu", pa.table({
        "ti": np.concatenate([[np.iinfo(np.int64).min], d["imu_ts"]]),
        "n": np.arange(cum.shape[0]), **{f"v{i}": cum[:, i] for i in range(6)}}))
    con.register("gps", pa.table({"tg": d["gps_ts"], "lat": d["gps_values"][:, 0],
                                  "lon": d["gps_values"][:, 1], "alt": d["gps_values"][:, 2]}))
    v = ", ".join(f"hi.v{i} - lo.v{i} AS s{i}" for i in range(6))
    gps_cols = ", ".join(
        f"CASE WHEN g.t1 = g.t0 THEN g.{c}0 ELSE g.{c}0 + (g.{c}1 - g.{c}0) * "
        f"(g.t - g.t0)::DOUBLE / (g.t1 - g.t0) END AS {c}" for c in ("lat", "lon", "alt"))
    out = con.execute(f"""
        WITH c AS (
          SELECT l.t, p.tc AS prev_c, n.tc AS next_c
          FROM lidar l ASOF LEFT JOIN cam p ON l.t >= p.tc
                       ASOF LEFT JOIN cam n ON l.t <= n.tc),
        cam_pick AS (
          SELECT t, CASE
            WHEN prev_c IS NULL THEN next_c
            WHEN next_c IS NULL THEN prev_c
            WHEN t - prev_c <= next_c - t THEN prev_c ELSE next_c END AS tc FROM c),
        w AS (
          SELECT l.t, hi.n - lo.n AS cnt, {v}
          FROM lidar l ASOF JOIN imu hi ON l.t + {IMU_HALF_WINDOW_NS} > hi.ti
                       ASOF JOIN imu lo ON l.t - {IMU_HALF_WINDOW_NS} > lo.ti),
        g AS (
          SELECT l.t, b.tg AS t0, f.tg AS t1, b.lat AS lat0, f.lat AS lat1, b.lon AS lon0,
                 f.lon AS lon1, b.alt AS alt0, f.alt AS alt1
          FROM lidar l ASOF LEFT JOIN gps b ON l.t >= b.tg ASOF LEFT JOIN gps f ON l.t <= f.tg)
        SELECT cp.t,
               CASE WHEN abs(cp.tc - cp.t) < {CAMERA_MATCH_NS} THEN cp.tc ELSE -1 END AS cam,
               w.cnt, {", ".join(f"w.s{i} / nullif(w.cnt, 0) AS m{i}" for i in range(6))},
               {gps_cols}
        FROM cam_pick cp JOIN w USING (t) JOIN g USING (t) ORDER BY cp.t
    """).fetchnumpy()

    def floats(col: str) -> np.ndarray:  # SQL NULL arrives masked
        return np.ma.filled(np.ma.asarray(out[col], dtype=np.float64), np.nan)

    return {"camera_ts": np.asarray(out["cam"], dtype=np.int64),
            "imu": np.column_stack([floats(f"m{i}") for i in range(6)]),
            "imu_count": np.asarray(out["cnt"]),
            "gps": np.column_stack([floats(c) for c in ("lat", "lon", "alt")])}


IMPLEMENTATIONS = {"robolake (numpy)": robolake_align, "pandas merge_asof": pandas_align,
                   "duckdb ASOF JOIN": duckdb_align}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _run(name: str, minutes: float, queue) -> None:
    data = synthetic(minutes)
    IMPLEMENTATIONS[name](data)  # warm-up: imports, JIT-free first-call costs
    base = _rss_mb()
    t0 = time.perf_counter()
    out = IMPLEMENTATIONS[name](data)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, elapsed, max(peak - base, 0.0), out))


def bench_alignment(minutes: float) -> None:
    ctx = mp.get_context("spawn")
    results = {}
    for name in IMPLEMENTATIONS:
        q = ctx.Queue()
        p = ctx.Process(target=_run, args=(name, minutes, q))
        p.start()
        results[name] = q.get()
        p.join()
    ref = results["robolake (numpy)"][3]
    rows = len(ref["imu_count"])
    print(f"(a) alignment of {rows} LiDAR frames "
          f"(IMU {int(minutes * 6000)}, camera {int(minutes * 1800)}, GPS {int(minutes * 60)})")
    print(f"    {'implementation':<22}{'seconds':>9}{'rows/s':>12}{'peak MB':>9}  agrees")
    for name, (_, elapsed, peak, out) in results.items():
        agrees = (np.array_equal(out["camera_ts"], ref["camera_ts"])
                  and np.array_equal(out["imu_count"], ref["imu_count"])
                  and np.allclose(out["imu"], ref["imu"], rtol=0, atol=1e-9, equal_nan=True)
                  # np.interp and the baselines' weights differ in the last bits (~1e-9 rel.)
                  and np.allclose(out["gps"], ref["gps"], rtol=1e-8, atol=0, equal_nan=True))
        print(f"    {name:<22}{elapsed:>9.3f}{rows / elapsed:>12,.0f}{peak:>9.1f}  {agrees}")
    ours = results["robolake (numpy)"][1]
    fastest = min(v[1] for k, v in results.items() if k != "robolake (numpy)")
    print(f"    robolake / fastest baseline time = {ours / fastest:.2f} (target <= 1)")


def _slice_peak(path: Path, start_ns: int, end_ns: int, queue) -> None:
    """One chunk-range worker's work in a fresh process: the peak of what it allocates
    (tracemalloc sees Python objects and numpy arrays), the bytes of its output columns and
    of the camera check's lookup tables (built once per process, kept for its next
    recordings)."""
    import tracemalloc

    from robolake import jpegdc
    from robolake.decode import _decode_slice

    tracemalloc.start()
    decoded = _decode_slice(path, "raw/bench.mcap", start_ns, end_ns)
    peak = tracemalloc.get_traced_memory()[1]
    columns = sum(a.nbytes + (sum(len(str(x)) + 49 for x in a) if a.dtype == object else 0)
                  for kind in ("imu", "gps", "lidar", "camera")
                  for a in getattr(decoded, kind).values())
    tables = jpegdc.shared_tables_bytes()
    queue.put((peak / 2**20, columns / 2**20, tables / 2**20))


def _in_fresh_process(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def memory_report(path: Path, workers: int) -> None:
    """Each chunk-range worker holds one inflated chunk (and its compressed bytes) at a time,
    bounded batches of messages, and its slice's output columns: per worker the bound is
    2 x the largest chunk + its output columns, plus the camera check's lookup tables
    (fixed, per process). Each worker's slice is run alone here."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    largest = max(c.uncompressed_size for c in summary.chunk_indexes) / 2**20
    start, end = summary.statistics.message_start_time, summary.statistics.message_end_time
    edges = [start + (end + 1 - start) * i // workers for i in range(workers + 1)]
    for i in range(workers):
        peak, columns, tables = _in_fresh_process(_slice_peak, path, edges[i], edges[i + 1])
        print(f"    memory, worker {i + 1}/{workers}: peak {peak:.1f} MB allocated; bound "
              f"{2 * largest + columns + tables:.1f} MB (2 x largest chunk {largest:.1f} MB + "
              f"its output columns {columns:.1f} MB + lookup tables {tables:.1f} MB)")


def bench_cleaned(minutes: float, rounds: int) -> None:
    from mcap.stream_reader import StreamReader

    from robolake.cleaned import Upload, clean_upload, write_without_overlap
    from robolake.settings import reset_settings
    from robolake.simulate import RobotIdentity, simulate_recording
    from robolake.storage import open_store

    with tempfile.TemporaryDirectory(prefix="robolake-bench-") as tmp:
        t0 = time.perf_counter()
        truth = simulate_recording(Path(tmp), RobotIdentity("bench-0", "delivery", "eu-west"),
                                   START, minutes * 60, seed=1)
        path = Path(tmp) / truth["file"]
        print(f"(b) one recording: {truth['message_count']:,} messages, "
              f"{path.stat().st_size / 1e6:.0f} MB (simulated in {time.perf_counter() - t0:.0f}s)")

        def floor() -> None:
            with open(path, "rb") as f:
                for _ in StreamReader(f).records:
                    pass

        def ours() -> None:
            # a lake of its own per run: the upload's first cleaning, as in a partition run
            lake = open_store(Path(tempfile.mkdtemp(dir=tmp, prefix="lake-")))
            upload = Upload("bench", "bench-0", "delivery", "eu-west", "raw/bench.mcap",
                            time.time_ns())
            result = clean_upload(path, upload, "2026-11-27")
            for name in ("imu", "gps", "lidar", "camera", "aligned"):  # as the engines write
                write_without_overlap(lake, name, getattr(result, name), [upload], "delivery")

        cores = os.cpu_count() or 1

        def ours_on(workers: int):
            def run() -> None:
                os.environ["ROBOLAKE_DECODE_WORKERS"] = str(workers)
                reset_settings()
                ours()
            return run

        runs_of = (("floor: mcap StreamReader, no decode (1 core)", floor, 0),
                   ("robolake cleaned layer, 1 core", ours_on(1), 1),
                   (f"robolake cleaned layer, {cores} cores", ours_on(cores), cores))
        names = [name for name, _, _ in runs_of]
        for _, fn, _ in runs_of[1:]:
            fn()  # in-process: the decode workers and lookup tables warm, as in a step
        # rounds of floor, 1 core, all cores, in-process then whole process, so that the
        # machine's drifting speed hits all alike; the figures are medians over the rounds
        timed: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for name, fn, _ in runs_of:
                wall = time.perf_counter()
                fn()
                timed.setdefault(("in-process", name), []).append(time.perf_counter() - wall)
            for name, _, workers in runs_of:
                timed.setdefault(("whole process", name), []).append(
                    whole_process(path, Path(tmp) / "lake-whole", workers))
        n, gb = truth["message_count"], path.stat().st_size / 1e9
        med = {k: statistics.median(v) for k, v in timed.items()}

        def ratio(label: str, a: str, b: str) -> float:  # median of the rounds' a / b
            return statistics.median(x / y for x, y in zip(timed[(label, a)],
                                                           timed[(label, b)], strict=True))

        print(f"    medians of {rounds} rounds{'in-process':>30}{'whole process':>22}")
        cols = f"{'wall s':>8}{'msg/s':>8}{'x fl':>6}"
        print(f"    {'':<46}{cols}{cols}")
        for name in names:
            row = "".join(f"{med[(label, name)]:>8.2f}{n / med[(label, name)] / 1e3:>7.0f}k"
                          f"{ratio(label, name, names[0]):>6.2f}"
                          for label in ("in-process", "whole process"))
            print(f"    {name:<46}{row}")
        for label in ("in-process", "whole process"):
            one, alls = med[(label, names[1])], med[(label, names[2])]
            print(f"    {label}: per core {n / one:,.0f} msg/s, {one / gb:.0f} s/GB, "
                  f"{ratio(label, names[1], names[0]):.2f}x the floor; {cores} cores "
                  f"{alls / gb:.0f} s/GB, {1 / ratio(label, names[2], names[1]):.2f}x the 1-core "
                  "speed (medians of the rounds' ratios)")
        print("    targets: <= 1.0x the floor per core, >= 100 K msg/s, <= 30 s/GB, "
              "near-linear in cores")
        memory_report(path, max(cores, 2))


WHOLE_OURS = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from robolake.cleaned import Upload, clean_upload, write_without_overlap
from robolake.storage import open_store
upload = Upload("bench", "bench-0", "delivery", "eu-west", "raw/bench.mcap", time.time_ns())
result = clean_upload(Path({path!r}), upload, "2026-11-27")
lake = open_store(Path({lake!r}))
for name in ("imu", "gps", "lidar", "camera", "aligned"):
    write_without_overlap(lake, name, getattr(result, name), [upload], "delivery")
"""
WHOLE_FLOOR = """
from mcap.stream_reader import StreamReader
with open({path!r}, "rb") as f:
    for _ in StreamReader(f).records:
        pass
"""


def whole_process(path: Path, lake: Path, workers: int) -> float:
    """Wall seconds of a fresh interpreter doing the work: 0 workers, the floor; else the
    cleaned layer on that many decode processes."""
    import shutil
    import subprocess

    code = (WHOLE_FLOOR if not workers else WHOLE_OURS).format(repo=str(REPO), path=str(path),
                                                                lake=str(lake))
    env = {**os.environ, "ROBOLAKE_DECODE_WORKERS": str(max(workers, 1))}
    shutil.rmtree(lake, ignore_errors=True)
    wall = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="robot-time to process")
    parser.add_argument("--skip-b", action="store_true", help="alignment only")
    parser.add_argument("--rounds", type=int, default=5, help="(b): rounds of paired runs")
    args = parser.parse_args()
    bench_alignment(args.minutes)
    if not args.skip_b:
        bench_cleaned(args.minutes, args.rounds)


if __name__ == "__main__":
    main()
