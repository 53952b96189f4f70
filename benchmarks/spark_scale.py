"""The cleaned layer on one simulated fleet day: local engine vs Spark local[1] and local[2].

One partition (one robot type) of `--robots` recordings of `--minutes` each is simulated,
ingested once, and cleaned by each engine on its own copy of the lake, in one run:

- local: `cleaned.clean_partition` in this process, one core (ROBOLAKE_DECODE_WORKERS=1),
  and on two (one upload per warm worker process, robolake.workers);
- Spark `local[1]` and `local[2]`: `spark_engine.clean_partition_spark`, one task per
  upload (each task decodes on one core too). Spark's start-up (JVM, context) is timed
  apart from the partition.

- the machine's own ceiling: the same per-upload task (`spark_engine.clean_upload_task`)
  in a pool of 1 and of 2 plain processes, no Spark: how much a second core gives this
  work on this machine at all.

Each engine cleans the day twice (two copies of the lake) in one process or Spark session:
the first run pays what a process's first partition pays (lookup tables, first-use costs,
the first Spark job), the second is the steady state of a long-lived step process or
session. Prints seconds for both runs, MB/s and messages/s, the speed-up from 1 to 2 cores
beside the ceiling, and Spark's overhead over the local engine at one core, and checks
that the four engines' lakes hold identical cleaned tables. Targets (issue 11): >= 1.8x
from 1 to 2 cores, overhead <= 15 % at 1 core. Not a test: it never fails on time.

Usage: python benchmarks/spark_scale.py [--robots 8] [--minutes 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# every decode on one core, in this process and in Spark's Python workers (they inherit
# the environment when the JVM starts), so a Spark core is a core
os.environ["ROBOLAKE_DECODE_WORKERS"] = "1"
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from robolake import cleaned, raw, spark_engine, workers  # noqa: E402
from robolake.settings import reset_settings  # noqa: E402
from robolake.simulate import simulate_fleet  # noqa: E402
from robolake.storage import open_store  # noqa: E402
from robolake.tables import read_table  # noqa: E402
from robolake_resources.spark import spark_config  # noqa: E402

DAY = "2026-11-20"


def start_spark(master: str):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    conf = {**spark_config(master, "robolake-bench"), "spark.ui.enabled": "false"}
    for k, v in conf.items():
        builder = builder.config(k, v)
    started = time.perf_counter()
    session = builder.getOrCreate()
    # Python workers up, with robolake imported (a long-lived executor's workers are
    # reused across partitions: importing is start-up, not per-partition work)
    cores = session.sparkContext.defaultParallelism
    session.sparkContext.parallelize(range(cores), cores).map(_warm).collect()
    return session, time.perf_counter() - started


def _warm(_: int) -> int:
    import robolake.spark_engine  # noqa: F401

    time.sleep(0.5)  # hold this worker so the next task starts another
    return os.getpid()


def plain_processes(base: Path, lake_dir: Path, part: tuple[str, str], processes: int) -> float:
    """Seconds for the partition's per-upload tasks in a pool of plain processes (started and
    with robolake imported before the clock starts, like Spark's warm Python workers)."""
    import multiprocessing

    lake = open_store(shutil.copytree(base, lake_dir))
    plan = cleaned.plan_cleaning(lake, *part)
    tasks = [spark_engine.TaskInput(lake.uri, part[0], u, fmt, time.time_ns(),
                                    plan.sizes[u.upload_id]) for u, fmt in plan.todo]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm, range(processes), chunksize=1)
        started = time.perf_counter()
        pool.map(spark_engine.clean_upload_task, tasks, chunksize=1)
        return time.perf_counter() - started


def tables(lake_dir: Path) -> dict[str, pl.DataFrame]:
    out = {}
    for kind, key in cleaned.TABLES.items():
        frame = pl.from_arrow(read_table(open_store(lake_dir), key))
        frame = frame.drop("cleaned_ns", "latency_s", strict=False)
        out[kind] = frame.sort([c for c, t in frame.schema.items() if not t.is_nested()])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robots", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spark-scale-") as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        simulate_fleet(tmp / "landing", robots=args.robots, date=DAY, minutes=args.minutes,
                       seed=args.seed, robot_types=["delivery"])
        base = tmp / "lake-raw"
        [part] = sorted(raw.ingest_landing(open_store(tmp / "landing"), open_store(base)))
        mb = spark_engine.partition_input_bytes(open_store(base), *part) / 1e6
        print(f"{args.robots} robots x {args.minutes:g} min, one partition {part}: "
              f"{mb:.0f} MB of uploads (simulated and ingested in {time.perf_counter() - t:.0f} s)")

        # name -> (first run's seconds, second run's seconds, start-up seconds): each engine
        # cleans the day twice, on two copies of the lake, in one process or session; the
        # second run is the steady state of a long-lived step process or Spark session
        results: dict[str, tuple[float, float, float]] = {}
        lakes: list[Path] = []

        def twice(name: str, clean, startup: float = 0.0):
            secs, out = [], None
            for i in range(2):
                lake = shutil.copytree(base, tmp / f"lake-{len(lakes)}-{i}")
                t = time.perf_counter()
                out = clean(open_store(lake))
                secs.append(time.perf_counter() - t)
            lakes.append(lake)
            results[name] = (secs[0], secs[1], startup)
            return out

        local = twice("local engine (1 core)", lambda lk: cleaned.clean_partition(lk, *part))
        messages = sum(local.counts.get(k, 0) for k in ("imu_samples", "gps_fixes",
                                                        "lidar_frames", "camera_frames"))
        # the local engine on 2 cores: one upload per warm worker process (robolake.workers;
        # their imports done first, as Spark's Python workers' are)
        os.environ["ROBOLAKE_DECODE_WORKERS"] = "2"
        reset_settings()
        workers.run_all(2, _warm, [(0,), (1,)])
        twice("local engine (2 cores)", lambda lk: cleaned.clean_partition(lk, *part))
        os.environ["ROBOLAKE_DECODE_WORKERS"] = "1"
        reset_settings()
        for cores in (1, 2):
            session, startup = start_spark(f"local[{cores}]")
            runs = []

            def on_spark(lk, session=session, runs=runs):
                runs.append(spark_engine.clean_partition_spark(session, lk, *part)[1])

            twice(f"Spark local[{cores}]", on_spark, startup)
            for i, run in enumerate(runs):
                print(f"  Spark local[{cores}], run {i + 1}: stage {run.stage_seconds:.2f} s "
                      f"(tasks' own work {run.task_seconds:.2f} s summed), driver commits "
                      f"{run.commit_seconds:.2f} s")
                assert run.tasks == args.robots
            session.stop()

        ceiling = [plain_processes(base, tmp / f"lake-pool{n}", part, n) for n in (1, 2)]
        print(f"  plain processes (no Spark): 1 process {ceiling[0]:.2f} s, 2 processes "
              f"{ceiling[1]:.2f} s")
        print(f"{'engine':<24}{'1st run s':>10}{'2nd run s':>10}{'MB/s':>8}{'msg/s':>10}"
              f"{'start-up s':>12}   (MB/s, msg/s: the 2nd run)")
        for name, (first, secs, startup) in results.items():
            print(f"{name:<24}{first:>10.2f}{secs:>10.2f}{mb / secs:>8.1f}{messages / secs:>10.0f}"
                  f"{startup:>12.1f}")
        for i, label in ((1, "steady state: the 2nd run"), (0, "the 1st run of a process")):
            local_s = results["local engine (1 core)"][i]
            one, two = results["Spark local[1]"][i], results["Spark local[2]"][i]
            print(f"{label}: local engine 1 -> 2 cores "
                  f"{local_s / results['local engine (2 cores)'][i]:.2f}x; Spark 1 -> 2 cores "
                  f"{one / two:.2f}x (target >= 1.8x); Spark overhead at 1 core "
                  f"{one / local_s - 1:+.1%} (target <= 15 %)")
        print(f"the tasks in plain processes, 1 -> 2: {ceiling[0] / ceiling[1]:.2f}x "
              f"({os.cpu_count()} CPUs: this machine's ceiling for this work, this run); "
              f"Spark's start-up apart: {results['Spark local[1]'][2]:.1f} s")
        reference = tables(lakes[0])
        same = all(tables(lk)[k].equals(reference[k]) for lk in lakes[1:] for k in reference)
        print(f"identical cleaned tables from all four: {same}")


if __name__ == "__main__":
    main()
