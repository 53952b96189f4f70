"""The cleaned layer on one simulated fleet day: local engine vs Spark local[1] and local[2].

One partition (one robot type) of `--robots` recordings of `--minutes` each is simulated
and ingested once. Each engine then lives in its own long-lived process (started, Spark
session and warm workers up, before any clock runs) and cleans fresh copies of that lake:

- local engine, 1 core: `cleaned.clean_partition` in its process (ROBOLAKE_DECODE_WORKERS=1);
- local engine, 2 cores: the same, one upload per warm worker process (robolake.workers);
- Spark `local[1]` and `local[2]`: `spark_engine.clean_partition_spark`, one task per
  upload (each task decodes on one core too);
- the machine's own ceiling: the same per-upload task (`spark_engine.clean_upload_task`)
  in a pool of 1 and of 2 plain processes, no Spark, no commit: how much a second core
  gives this work on this machine at all, in the same round.

The engines run in rounds, one run each per round, in an order that rotates, so that this
machine's drifting speed (it changes by half within minutes) hits all alike. The first
round is each process's first partition (first-use costs, the first Spark job) and is
reported apart; the figures are medians over the other rounds (the steady state of a
long-lived step process or Spark session), and the ratios are medians of the rounds'
ratios. Spark's start-up (JVM, context) is timed apart. Checks that the four engines' lakes
hold identical cleaned tables. Targets (issue 11): >= 1.8x from 1 to 2 cores, overhead
<= 15 % at 1 core. Not a test: it never fails on time.

Usage: python benchmarks/spark_scale.py [--robots 8] [--minutes 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from robolake import cleaned, raw, spark_engine  # noqa: E402
from robolake.simulate import simulate_fleet  # noqa: E402
from robolake.storage import open_store  # noqa: E402
from robolake.tables import read_table  # noqa: E402

DAY = "2026-11-20"
ENGINES = {  # name -> (kind, cores)
    "local engine (1 core)": ("local", 1),
    "local engine (2 cores)": ("local", 2),
    "Spark local[1]": ("spark", 1),
    "Spark local[2]": ("spark", 2),
    "plain processes (1)": ("plain", 1),
    "plain processes (2)": ("plain", 2),
}


def _warm(_: int) -> int:
    time.sleep(0.5)  # hold this worker so that the next call starts another
    return os.getpid()


def serve(kind: str, cores: int, part: tuple[str, str], conn) -> None:
    """An engine's process: set up, then clean each lake it is sent (None ends it) and
    answer (seconds, details)."""
    # every decode on one core: a Spark core, a worker process, a pool process is a core
    os.environ["ROBOLAKE_DECODE_WORKERS"] = str(cores if kind == "local" else 1)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    started = time.perf_counter()
    if kind == "spark":
        from pyspark.sql import SparkSession

        from robolake_resources.spark import spark_config

        builder = SparkSession.builder
        conf = {**spark_config(f"local[{cores}]", "robolake-bench"),
                "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
        for k, v in conf.items():
            builder = builder.config(k, v)
        session = builder.getOrCreate()
        # its Python workers up (a long-lived executor's workers are reused across
        # partitions); the daemon they fork from has robolake imported
        session.sparkContext.parallelize(range(cores), cores).map(
            lambda _: time.sleep(0.5)).collect()

        def clean(lake):
            run = spark_engine.clean_partition_spark(session, lake, *part)[1]
            return {"stage": run.stage_seconds, "tasks": run.task_seconds,
                    "commits": run.commit_seconds}
    elif kind == "local":
        from robolake import workers

        if cores > 1:  # its warm workers up, robolake imported, as Spark's are
            workers.run_all(cores, _warm, [(i,) for i in range(cores)])

        def clean(lake):
            return {"counts": cleaned.clean_partition(lake, *part).counts}
    else:
        pool = mp.get_context("spawn").Pool(cores)
        pool.map(_warm, range(cores), chunksize=1)

        def clean(lake):
            plan = cleaned.plan_cleaning(lake, *part)
            tasks = [spark_engine.TaskInput(lake.uri, part[0], u, fmt, time.time_ns(),
                                            plan.sizes[u.upload_id]) for u, fmt in plan.todo]
            pool.map(spark_engine.clean_upload_task, tasks, chunksize=1)
            return {}
    conn.send(time.perf_counter() - started)
    while (path := conn.recv()) is not None:
        t = time.perf_counter()
        details = clean(open_store(path))
        conn.send((time.perf_counter() - t, details))
    if kind == "spark":
        session.stop()


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
    parser.add_argument("--rounds", type=int, default=5, help="steady-state rounds")
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
              f"{mb:.0f} MB of uploads (simulated and ingested in {time.perf_counter() - t:.0f} s)"
              f"; {os.cpu_count()} CPUs", flush=True)

        ctx = mp.get_context("spawn")
        conns, procs, startup = {}, [], {}
        for name, (kind, cores) in ENGINES.items():  # one at a time: start-ups don't overlap
            conns[name], child = ctx.Pipe()
            procs.append(ctx.Process(target=serve, args=(kind, cores, part, child)))
            procs[-1].start()
            startup[name] = conns[name].recv()

        # name -> [(seconds, details)] per round; round 0 is each process's first partition
        runs: dict[str, list[tuple[float, dict]]] = {name: [] for name in ENGINES}
        names = list(ENGINES)
        lakes: dict[str, Path] = {}
        for r in range(args.rounds + 1):
            for name in names[r % len(names):] + names[:r % len(names)]:
                # a copy of links: the engines only add files, and copying 0.5 GB before
                # each run would leave its write-back to slow the runs after it
                lake = shutil.copytree(base, tmp / f"lake-{len(names) * r + names.index(name)}",
                                       copy_function=os.link)
                conns[name].send(str(lake))
                runs[name].append(conns[name].recv())
                if name in lakes:
                    shutil.rmtree(lakes[name])
                lakes[name] = lake
            print(f"  round {r}: " + ", ".join(f"{n} {runs[n][-1][0]:.2f} s" for n in names),
                  flush=True)
        for conn in conns.values():
            conn.send(None)
        for proc in procs:
            proc.join()

        steady = {name: [s for s, _ in runs[name][1:]] for name in names}
        med = {name: statistics.median(v) for name, v in steady.items()}

        def ratio(a: str, b: str, first: bool = False) -> float:  # median of a / b by round
            if first:
                return runs[a][0][0] / runs[b][0][0]
            return statistics.median(x / y for x, y in zip(steady[a], steady[b], strict=True))

        counts = runs["local engine (1 core)"][0][1]["counts"]
        messages = sum(counts.get(k, 0) for k in ("imu_samples", "gps_fixes", "lidar_frames",
                                                  "camera_frames"))
        print(f"\nmedians of {args.rounds} rounds (round 0, each process's first partition, "
              "apart)")
        print(f"{'engine':<24}{'median s':>10}{'range s':>14}{'MB/s':>8}{'msg/s':>10}"
              f"{'1st s':>8}{'start-up s':>12}")
        for name in names:
            lo, hi = min(steady[name]), max(steady[name])
            print(f"{name:<24}{med[name]:>10.2f}{f'{lo:.2f}-{hi:.2f}':>14}{mb / med[name]:>8.1f}"
                  f"{messages / med[name]:>10.0f}{runs[name][0][0]:>8.2f}{startup[name]:>12.1f}")
        for cores in (1, 2):
            parts = {k: statistics.median(d[k] for _, d in runs[f"Spark local[{cores}]"][1:])
                     for k in ("stage", "tasks", "commits")}
            print(f"  Spark local[{cores}] (medians): stage {parts['stage']:.2f} s (the tasks' "
                  f"own work {parts['tasks']:.2f} s summed), driver commits "
                  f"{parts['commits']:.2f} s")
        for label, first in (("steady state (medians of the rounds' ratios)", False),
                             ("round 0, each process's first partition", True)):
            print(f"{label}:\n"
                  f"  1 -> 2 cores: local engine "
                  f"{ratio('local engine (1 core)', 'local engine (2 cores)', first):.2f}x, "
                  f"Spark {ratio('Spark local[1]', 'Spark local[2]', first):.2f}x "
                  f"(target >= 1.8x), plain processes "
                  f"{ratio('plain processes (1)', 'plain processes (2)', first):.2f}x "
                  f"(this machine's ceiling for this work)\n"
                  f"  Spark's overhead over the local engine: 1 core "
                  f"{ratio('Spark local[1]', 'local engine (1 core)', first) - 1:+.1%} "
                  f"(target <= 15 %), 2 cores "
                  f"{ratio('Spark local[2]', 'local engine (2 cores)', first) - 1:+.1%}")
        engines = [n for n in names if not n.startswith("plain")]
        reference = tables(lakes[engines[0]])
        same = all(tables(lakes[n])[k].equals(reference[k]) for n in engines[1:]
                   for k in reference)
        print(f"identical cleaned tables from all four engines: {same}")


if __name__ == "__main__":
    main()
