"""The Spark engine for the cleaned layer: the same rules, one upload per Spark task.

The local engine (`cleaned.clean_partition`) decodes a partition's uploads in one
process. This engine runs `cleaned.clean_one` (decode, clean, align, report: the very
functions the local engine calls) in Spark tasks over `(upload_id, raw_key, …)` rows. Each
task reads its raw file through the lake store (a folder, or S3 through boto3: no Hadoop
S3A jars), writes Parquet part files straight into the cleaned tables' folders, and
returns their descriptions, its quality report and per-(robot, topic) time ranges. The
driver then commits each table once with delta-rs (`create_write_transaction`: the new
files added, the files holding those uploads' earlier rows removed), decided on a snapshot
and committed against exactly its version, as every keyed write in Robolake is
(`tables.commit_files`). Exactly once therefore holds as in the local engine: tasks run
for the uploads that `cleaned.plan_cleaning` picks (the new ones, or all on a re-clean),
a re-clean replaces their rows, and a concurrent writer makes the commit re-plan.

Rows that another upload of the same robot already holds (same topic and time) are
dropped exactly as the local engine does (`cleaned.drop_overlap`); the driver only reads
the part files of uploads whose time ranges touch another upload's, which on a real
fleet is rare, so the rows themselves never travel to the driver.

A task that dies (executor lost, Python worker killed) is retried by Spark; the part
files of its failed attempt are never named in a commit, so they are not in the table,
and maintenance's VACUUM deletes them once older than its retention.

The same tasks and commits also serve the local engine on several cores
(`clean_partition_processes`): warm worker processes on this machine
(robolake.workers) take the tasks instead of Spark (`run_partition_tasks`).

This module imports pyspark only inside functions; it never imports Dagster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import polars as pl

from robolake import cleaned as cl
from robolake.storage import Store, open_store
from robolake.tables import (
    Between,
    FileCommit,
    PartFile,
    Snapshot,
    commit_files,
    read_part_files,
    replace_files,
    replace_rows,
    write_part_files,
)
from robolake.workers import run_all

SHIPPED_OPTIONS = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP")  # no secrets
ROW_TABLES = [k for k in cl.TABLES if k != "report"]  # written by tasks; reports by the driver


def shipped_options(lake: Store) -> dict[str, str] | None:
    """What a Spark task needs to open the lake's store: the S3 endpoint and region, never
    credentials (executors take theirs from their own environment or pod role)."""
    if not lake.uri.startswith("s3://"):
        return None
    return {k: v for k, v in lake.delta_options.items() if k in SHIPPED_OPTIONS}


def choose_engine(engine: str, input_bytes: int, min_bytes: int) -> str:
    """'local' or 'spark' for a partition: `auto` picks Spark once the bytes to decode
    exceed `min_bytes` (below that, starting Spark costs more than it saves)."""
    if engine == "auto":
        return "spark" if input_bytes > min_bytes else "local"
    return engine


def partition_input_bytes(lake: Store, day: str, robot_type: str, reclean: bool = False) -> int:
    """Bytes of the raw copies a run of the partition decodes (its new uploads, or all
    with `reclean`: see `cleaned.CleaningPlan`)."""
    return cl.plan_cleaning(lake, day, robot_type, reclean).input_bytes


# --------------------------------------------------------------------------- the task


@dataclass(frozen=True)
class TaskInput:
    """One upload for one Spark task (plain values: shipped to executors)."""

    lake_uri: str
    day: str
    upload: cl.Upload
    fmt: str
    cleaned_ns: int
    size_bytes: int
    # to Spark: S3 endpoint and region (never credentials: executors take theirs from their
    # own environment or pod role, as boto3's default chain does); to local worker
    # processes (same machine, same user): the store's options as they are
    store_options: dict[str, str] | None = None


@dataclass
class TaskOutput:
    upload_id: str
    report: dict
    counts: dict[str, int]
    note: str
    parts: dict[str, list[PartFile]]  # table kind -> part files written (uncommitted)
    # table kind -> the time spans (cleaned.time_spans) of the rows in its part files
    ranges: dict[str, list[cl.Span]]
    input_bytes: int
    rows: int
    seconds: float
    attempt: int


def clean_upload_task(task: TaskInput,
                      hook: Callable[[str, int], None] | None = None) -> TaskOutput:
    """Run in a Spark task: one upload through `cleaned.clean_one`, its rows written as part
    files. `hook(upload_id, attempt)` runs after the files are written (fault injection in
    tests: a task that dies here leaves files that no commit names)."""
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        attempt = context.attemptNumber() if context is not None else 0
    except ImportError:  # called outside Spark (tests of the task itself)
        attempt = 0
    started = time.perf_counter()
    lake = open_store(task.lake_uri, task.store_options)
    up = task.upload
    # a task is one core: its recording is decoded in the task's own process
    result, report, note = cl.clean_one(lake, up, task.fmt, task.day, task.cleaned_ns,
                                        workers=1)
    parts: dict[str, list[PartFile]] = {}
    ranges: dict[str, list[cl.Span]] = {}
    rows = 0
    tag = f"spark-{up.upload_id[:12]}-a{attempt}"
    for kind in ROW_TABLES:
        frame = getattr(result, kind) if result is not None else pl.DataFrame(
            schema=cl.SCHEMAS[kind])
        rows += frame.height
        parts[kind] = write_part_files(lake, cl.TABLES[kind], frame, cl.PARTITION_BY, tag)
        ranges[kind] = cl.time_spans(frame, cl.OVERLAP_TOPIC[kind])
    if hook is not None:
        hook(up.upload_id, attempt)
    return TaskOutput(up.upload_id, report, dict(result.counts) if result else {}, note,
                      parts, ranges, task.size_bytes, rows, time.perf_counter() - started,
                      attempt)


# --------------------------------------------------------------------------- the driver


@dataclass
class SparkRun:
    """What the Spark engine did, for the asset's metadata."""

    tasks: int = 0
    retried_tasks: int = 0
    executors: int = 0
    input_bytes: int = 0
    rows: int = 0
    seconds: float = 0.0
    task_seconds: float = 0.0  # summed over tasks (decode, clean, write part files)
    stage_seconds: float = 0.0  # wall time of the Spark stage
    commit_seconds: float = 0.0  # the driver's overlap decisions and Delta commits
    ui_url: str | None = None
    orphan_files: list[str] = field(default_factory=list)  # written, never committed

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _plan_table(lake: Store, kind: str, outputs: list[TaskOutput], ids: list[str],
                robot_type: str, decided: dict) -> Callable[[Snapshot], FileCommit]:
    """The commit of one table, decided on a snapshot (again after a conflict)."""
    key, topic = cl.TABLES[kind], cl.OVERLAP_TOPIC[kind]
    spans = [r for o in outputs for r in o.ranges[kind]]
    scope: dict[str, object] = {
        "robot_type": robot_type, "robot_id": sorted({o.report["robot_id"] for o in outputs}),
        # only rows at the run's dates and times can hold the same keys
        "date": sorted({f.partition_values["date"] for o in outputs for f in o.parts[kind]})}
    if spans:
        scope["ts_ns"] = Between(min(r[3] for r in spans), max(r[4] for r in spans))

    def plan(snap: Snapshot) -> FileCommit:
        # other uploads' keys of these robots (what the local engine reads for the same rule)
        others = snap.read(["robot_id", topic, "ts_ns", "upload_id"], filters=scope,
                           schema=cl.SCHEMAS[kind]).filter(~pl.col("upload_id").is_in(ids))
        touching = cl.touching(spans, cl.time_spans(others, topic))
        adds: list[PartFile] = []
        dropped: dict[str, int] = {}
        if touching:  # the local engine's rule, on exactly the rows it could apply to
            mine = [f for o in outputs if o.upload_id in touching for f in o.parts[kind]]
            frame = read_part_files(lake, key, mine, cl.SCHEMAS[kind])
            kept, dropped = cl.drop_overlap(frame, others, topic, ids)
            if dropped:
                adds += write_part_files(lake, key, kept, cl.PARTITION_BY, "spark-overlap")
            else:
                touching = set()
        adds += [f for o in outputs if o.upload_id not in touching for f in o.parts[kind]]
        change = FileCommit(adds, [])
        if snap.table is not None:
            old = replace_files(lake, key, snap.table, "upload_id", ids,
                                {"robot_type": robot_type})
            change = FileCommit(adds + old.adds, old.removes)
        decided.update(adds=adds, dropped=dropped)
        return change

    return plan


def clean_partition_spark(spark, lake: Store, day: str, robot_type: str,
                          log=lambda _msg: None,
                          task_hook: Callable[[str, int], None] | None = None,
                          reclean: bool = False) -> tuple[cl.PartitionResult, SparkRun]:
    """`cleaned.clean_partition` with the uploads decoded in Spark tasks: same rows, same
    reports, each table committed once. `spark` is a SparkSession (from dagster-pyspark's
    PySparkResource in the Dagster code location)."""
    sc = spark.sparkContext
    # a cluster's block managers count the driver too; local mode runs in the driver
    local_mode = sc.master.startswith("local")
    managers = 1 if local_mode else sc._jsc.sc().getExecutorMemoryStatus().size()
    run = SparkRun(ui_url=sc.uiWebUrl, executors=max(1, managers - 1) if not local_mode else 1)
    if run.ui_url:
        log(f"Spark UI: {run.ui_url}")

    def on_spark(tasks: list[TaskInput]) -> list[TaskOutput]:
        hook = task_hook
        return (sc.parallelize(tasks, numSlices=len(tasks))
                .map(lambda t: clean_upload_task(t, hook)).collect())

    return run_partition_tasks(lake, day, robot_type, on_spark, run, shipped_options(lake),
                               log, reclean)


def clean_partition_processes(lake: Store, day: str, robot_type: str, processes: int,
                              log=lambda _msg: None, reclean: bool = False,
                              plan: cl.CleaningPlan | None = None,
                              ) -> tuple[cl.PartitionResult, SparkRun]:
    """The same tasks in `processes` warm worker processes on this machine (the local
    engine on several cores): each decodes one upload on its core and writes its part
    files; this process commits. Credentials travel with the store options (same
    machine), unlike to Spark executors."""
    def on_workers(tasks: list[TaskInput]) -> list[TaskOutput]:
        return run_all(processes, clean_upload_task, [(t,) for t in tasks])

    return run_partition_tasks(lake, day, robot_type, on_workers, SparkRun(executors=processes),
                               lake.delta_options or None, log, reclean, plan)


def run_partition_tasks(lake: Store, day: str, robot_type: str,
                        run_tasks: Callable[[list[TaskInput]], list[TaskOutput]],
                        run: SparkRun, store_options: dict[str, str] | None, log,
                        reclean: bool, plan: cl.CleaningPlan | None = None,
                        ) -> tuple[cl.PartitionResult, SparkRun]:
    # one sequence read top to bottom: plan, run the tasks, commit each table, report
    """Plan the partition's uploads, run one task each (`run_tasks`: Spark, or worker
    processes; biggest first, so the last ones to start are small), commit each table."""
    started = time.perf_counter()
    plan = plan or cl.plan_cleaning(lake, day, robot_type, reclean)
    if not plan.todo:
        return cl.nothing_to_clean(lake, day, robot_type, plan, log), run
    tasks = [TaskInput(lake.uri, day, u, fmt, plan.cleaned_ns(u.upload_id),
                       plan.sizes[u.upload_id], store_options) for u, fmt in plan.todo]
    run.tasks = len(tasks)
    stage_started = time.perf_counter()
    outputs = run_tasks(sorted(tasks, key=lambda t: -t.size_bytes))
    run.stage_seconds = time.perf_counter() - stage_started
    commit_started = time.perf_counter()
    by_id = {o.upload_id: o for o in outputs}
    outputs = [by_id[t.upload.upload_id] for t in tasks]  # the partition's upload order
    ids = [t.upload.upload_id for t in tasks]
    for i, o in enumerate(outputs, 1):
        if o.note.startswith("decode failed"):
            log(f"[{i}/{len(outputs)}] {tasks[i - 1].upload.raw_key}: {o.note}")
        elif not o.note:
            log(f"[{i}/{len(outputs)}] {o.report['robot_id']} {o.upload_id[:12]}: "
                f"{o.report['aligned_frames']} aligned frames; {o.report['notes'][0]}")
    run.retried_tasks = sum(1 for o in outputs if o.attempt > 0)
    counts: dict[str, int] = {}
    for o in outputs:
        for k, v in o.counts.items():
            counts[k] = counts.get(k, 0) + v
    versions: dict[str, int] = {}
    dropped: dict[str, dict[str, int]] = {}
    committed: dict[str, list[PartFile]] = {}
    for kind in ROW_TABLES:
        decided: dict = {}
        schema = pl.DataFrame(schema=cl.SCHEMAS[kind]).to_arrow().schema
        version = commit_files(lake, cl.TABLES[kind],
                               _plan_table(lake, kind, outputs, ids, robot_type, decided),
                               schema, cl.PARTITION_BY)
        assert version is not None
        versions[kind] = version
        dropped[kind] = decided["dropped"]
        committed[kind] = decided["adds"]
        kept = {f.path for f in decided["adds"]}
        run.orphan_files += [f"{cl.TABLES[kind]}/{f.path}" for o in outputs
                             for f in o.parts[kind] if f.path not in kept]
    reports = [o.report for o in outputs]
    cl.count_overlap(reports, dropped, counts, log)
    report_rows = pl.DataFrame(reports, schema=cl.REPORT_SCHEMA)
    versions["report"] = replace_rows(lake, cl.TABLES["report"], report_rows.to_arrow(),
                                      "upload_id", ids, partition_by=cl.PARTITION_BY,
                                      scope={"robot_type": robot_type})
    run.commit_seconds = time.perf_counter() - commit_started
    run.input_bytes = sum(o.input_bytes for o in outputs)
    run.rows = sum(f.rows for files in committed.values() for f in files)
    run.task_seconds = sum(o.seconds for o in outputs)
    run.seconds = time.perf_counter() - started
    result = cl.PartitionResult(day, robot_type, [t.upload for t in tasks],
                                CommittedRows(lake, committed, report_rows), versions,
                                reports, counts, plan.partition_reports(reports))
    return result, run


class CommittedRows(Mapping[str, pl.DataFrame]):
    """Table kind -> the rows a run committed, read from its part files when first asked
    for (the asset's checks validate them): the engine itself never brings rows to the
    driver."""

    def __init__(self, lake: Store, files: dict[str, list[PartFile]], reports: pl.DataFrame):
        self._lake, self._files, self._read = lake, files, {"report": reports}

    def __getitem__(self, kind: str) -> pl.DataFrame:
        if kind not in self._read:
            self._read[kind] = read_part_files(self._lake, cl.TABLES[kind], self._files[kind],
                                               cl.SCHEMAS[kind])
        return self._read[kind]

    def __iter__(self) -> Iterator[str]:
        return iter([*self._files, "report"])

    def __len__(self) -> int:
        return len(self._files) + 1
