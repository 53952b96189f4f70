"""`robolake` command line: simulate a fleet, ingest the landing zone, show the lake.

Lives beside the Dagster code location (not in `robolake/`) because `ingest`
materializes assets through Dagster so that its runs show in the UI.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from robolake.settings import Settings
from robolake_assets.cli_common import add_lake_option, lake_store


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.simulate import simulate_fleet

    faults = [f for part in args.faults for f in part.split(",") if f]
    truth = simulate_fleet(Path(args.out), robots=args.robots, date=args.date,
                           minutes=args.minutes, seed=args.seed, fmt=args.format, faults=faults)
    for r in truth["recordings"]:
        faults_text = ",".join(r["faults"]) or "-"
        print(f"{r['file']:<40} {r['identity']['robot_type']:<14} faults={faults_text}")
    print(f"wrote {len(truth['recordings'])} recording(s) and ground_truth.json to {args.out}")
    return 0


PID_TAG, HOST_TAG = "robolake/pid", "robolake/host"


def cli_run_tags() -> dict[str, str]:
    """Tags of runs executed in this process: who runs them, so a later start-up can tell
    a run whose process died from one still going."""
    return {"robolake/trigger": "cli", PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def open_instance(home: Path):
    """The Dagster instance, its storage created under a file lock: two first-time runs
    on a new DAGSTER_HOME would otherwise race creating the same SQLite tables."""
    import fcntl

    import dagster as dg

    with open(home / ".robolake-instance.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)  # creates the run, event log and schedule storage now
        instance.get_dynamic_partitions("robot_type")
        fcntl.flock(lock, fcntl.LOCK_UN)
    from robolake_assets.linked_runs import link_runs_to_jobs

    return link_runs_to_jobs(instance)  # the runs show under their jobs in the UI


def fail_dead_cli_runs(instance) -> list[str]:
    """Mark failed the runs this machine's robolake processes left STARTED when they died
    (killed, out of memory); a run of a live process is left alone."""
    import dagster as dg
    import psutil

    dead = []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                   tags={HOST_TAG: socket.gethostname()}))
    for run in runs:
        pid = int(run.tags.get(PID_TAG, "0"))
        record = instance.get_run_record_by_id(run.run_id)
        started = record.start_time or 0 if record else 0
        try:
            alive = psutil.Process(pid).create_time() <= started + 1
        except (psutil.NoSuchProcess, ValueError):
            alive = False
        if not alive:
            instance.report_run_failed(run, message=f"the robolake process (pid {pid}) that ran "
                                                    "it is gone; marked failed at start-up")
            dead.append(run.run_id)
    return dead


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.settings import ensure_dagster_home

    settings = settings.replace(landing=args.landing, lake=args.lake)
    home = ensure_dagster_home(settings)

    from robolake.ingest_plan import pending_partitions
    from robolake.layers import LAYERS, PARTITIONED_LAYERS
    from robolake.settings import use_settings
    from robolake.storage import open_store

    through_partitioned = (args.through if args.through in PARTITIONED_LAYERS
                           else PARTITIONED_LAYERS[-1])
    landing, lake = open_store(settings.landing), open_store(settings.lake)
    # the files are recorded before the definitions load: the daily partitions then start
    # at this lake's first date, so every pending day is a partition
    pending, n_files = pending_partitions(landing, lake, through_partitioned)
    use_settings(settings)
    from robolake_assets.definitions import build_definitions
    from robolake_assets.jobs import ingest_job_name
    from robolake_partitions import robot_type_partitions

    defs = build_definitions(settings)
    print(f"landing {landing.uri}: {n_files} recording(s), {len(pending)} partition(s) to ingest")
    instance = open_instance(home)
    for run_id in fail_dead_cli_runs(instance):
        print(f"run {run_id[:8]} was left STARTED by a robolake process that died: marked failed")
    known = set(instance.get_dynamic_partitions(robot_type_partitions.name))
    new_types = sorted({rt for _, rt in pending} - known)
    if new_types:
        instance.add_dynamic_partitions(robot_type_partitions.name, new_types)
    failed = _run_partitions(defs.resolve_job_def(ingest_job_name(through_partitioned)),
                             instance, pending)
    later = LAYERS[LAYERS.index(through_partitioned) + 1: LAYERS.index(args.through) + 1]
    for layer in later:
        if failed:
            break
        for job_name, partition in _layer_jobs(layer, settings, lake, instance):
            if not _run_layer_job(defs, instance, layer, job_name, partition):
                failed.append(job_name)
    print_summary(lake, home)
    if "models" in later:
        from robolake.models.tracking import ui_command

        print(f"MLflow: make mlflow  (or {ui_command(lake)}; then open http://127.0.0.1:5000)")
    if failed:
        print(f"failed: {', '.join(failed)}; see the runs in the UI", file=sys.stderr)
        return 1
    return 0


def _run_partitions(job, instance, pending: list[tuple[str, str]]) -> list[str]:
    """Run `job` once per (date, robot type) partition; the partitions that failed."""
    from robolake_partitions import partition_key

    failed = []
    for i, (day, robot_type) in enumerate(pending, 1):
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, partition_key=partition_key(day, robot_type),
            tags=cli_run_tags(), raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}})
        state = "ok" if result.success else "FAILED"
        print(f"[{i}/{len(pending)}] {day}|{robot_type}: {state} in "
              f"{time.perf_counter() - started:.1f}s (run {result.run_id[:8]})")
        if not result.success:
            failed.append(f"{day}|{robot_type}")
    return failed


def _run_layer_job(defs, instance, layer: str, job_name: str,
                   partition: str | None = None) -> bool:
    """Run one job of a layer after the (date, robot type) ones (a model job: one dataset
    version's partition); print what an evaluation decided and why a step failed. True
    when it succeeded."""
    started = time.perf_counter()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, tags=cli_run_tags(), raise_on_error=False, partition_key=partition)
    state = "ok" if result.success else "FAILED"
    on = f" on dataset version {partition}" if partition else ""
    print(f"{layer} ({job_name}{on}): {state} in {time.perf_counter() - started:.1f}s "
          f"(run {result.run_id[:8]})")
    for event in result.get_asset_materialization_events():
        meta = event.materialization.metadata
        if "decision" in meta:  # an evaluation: say what the gate decided and why
            print(f"  {event.asset_key.to_user_string()}: model version "
                  f"{meta['model_version'].value} {meta['decision'].value}\n    "
                  + meta["reasons"].value.replace("\n", "\n    "))
    for event in result.all_events if not result.success else []:
        if event.is_step_failure:
            print(f"  {event.step_key}: {event.step_failure_data.error.message.strip()}",
                  file=sys.stderr)
    return result.success


def _layer_jobs(layer: str, settings: Settings, lake,
                instance) -> list[tuple[str, str | None]]:
    """The jobs (and partition) that build a layer after the (date, robot type) ones:
    datasets span those partitions; a model trains on the dataset version its config
    names (registered as a partition of the model assets if the lake has it)."""
    if layer == "datasets":
        from robolake_assets.datasets import load_specs

        print(f"datasets: {len(load_specs(settings.specs_dir))} spec(s) in {settings.specs_dir}")
        return [("build_datasets", None)]
    from robolake.datasets.build import list_versions
    from robolake_assets.models import train_job_name, training_configs
    from robolake_partitions import dataset_version_partitions

    configs = training_configs(settings.training_configs_dir).values()
    print(f"models: {len(configs)} training config(s) in {settings.training_configs_dir}")
    for config in configs:
        versions = dataset_version_partitions(config.dataset.name)
        registered = config.dataset.version in list_versions(lake, config.dataset.name)[
            "version"].to_list()
        if registered and not instance.has_dynamic_partition(versions.name,
                                                             config.dataset.version):
            instance.add_dynamic_partitions(versions.name, [config.dataset.version])
    return [(train_job_name(config), config.dataset.version) for config in configs]


def print_summary(lake, dagster_home: Path | None = None) -> None:
    import polars as pl

    from robolake import cleaned, raw
    from robolake.tables import read_table

    table = read_table(lake, raw.RAW_UPLOADS)
    print()
    if table is None or table.num_rows == 0:
        print(f"lake {lake.uri}: no uploads indexed yet")
        return
    df = pl.from_arrow(table)
    by_status = (df.group_by("status")
                 .agg(pl.len().alias("uploads"), pl.col("size_bytes").sum().alias("bytes"),
                      pl.col("message_count").sum().alias("messages"))
                 .sort("status"))
    print("raw/uploads by status")
    print(f"  {'status':<12}{'uploads':>8}{'messages':>12}{'MB':>10}")
    for r in by_status.iter_rows(named=True):
        print(f"  {r['status']:<12}{r['uploads']:>8}{r['messages']:>12}{r['bytes'] / 1e6:>10.1f}")
    print(f"  {'total':<12}{df.height:>8}{df['message_count'].sum():>12}"
          f"{df['size_bytes'].sum() / 1e6:>10.1f}")
    quarantined = df.filter(pl.col("status") == "quarantined")
    if quarantined.height:
        print("quarantined")
        for r in quarantined.iter_rows(named=True):
            print(f"  {r['reasons'][0]}")
    reports = read_table(lake, cleaned.TABLES["report"])
    if reports is not None and reports.num_rows:
        print("cleaned tables")
        for key in cleaned.TABLES.values():
            table = read_table(lake, key, columns=["upload_id"])
            print(f"  {key:<28}{table.num_rows if table is not None else 0:>10} rows")
        metrics = cleaned.partition_report(reports.to_pylist())
        passed = cleaned.check_report(metrics)
        print("quality (all uploads): " + ", ".join(
            f"{k} {'ok' if ok else 'FAIL'}" for k, ok in passed.items()))
    from robolake.datasets.build import list_versions

    versions = list_versions(lake)
    if versions.height:
        print("datasets (robolake datasets list / compare)")
        for r in versions.iter_rows(named=True):
            print(f"  {r['name']} {r['version']}: train {r['samples_train']}, val "
                  f"{r['samples_val']}, test {r['samples_test']} samples from "
                  f"{r['recordings']} recordings  ({lake.uri}/{r['manifest_key']})")
    print(f"lake:  {lake.uri}  (Delta tables under raw/ and cleaned/; copies under raw/files/)")
    if dagster_home:
        print(f"runs:  DAGSTER_HOME={dagster_home}")
    print("UI:    make ui   (then open http://127.0.0.1:3000)")


def text_table(header: list[str], rows: list[list]) -> str:
    """Plain aligned columns (numbers right-aligned), as a terminal shows them."""
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(r[i], int | float) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w)
                       for c, w, num in zip(r, widths, numeric, strict=True)).rstrip()
             for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


REGISTRY_COLUMNS = ["name", "version", "created_ns", "samples_train", "samples_val",
                    "samples_test", "recordings", "missing_rate", "spec_hash"]


def print_dataset_versions(lake, name: str | None) -> None:
    """The dataset registry as a table (read straight from its Delta table: no dataset
    build code, so the listing is quick)."""
    from robolake.tables import read_table

    table = read_table(lake, "datasets/registry", columns=REGISTRY_COLUMNS)
    rows = sorted((r for r in (table.to_pylist() if table is not None else [])
                   if not name or r["name"] == name), key=lambda r: (r["name"], r["created_ns"]))
    if not rows:
        print("no dataset versions registered yet (robolake ingest --through datasets)")
        return
    print(text_table(
        ["dataset", "version", "created (UTC)", "train", "val", "test", "recordings",
         "missing", "spec hash"],
        [[r["name"], r["version"], time.strftime("%Y-%m-%d %H:%M", time.gmtime(
            r["created_ns"] / 1e9)), r["samples_train"], r["samples_val"], r["samples_test"],
          r["recordings"], f"{r['missing_rate']:.1%}", r["spec_hash"][:12]] for r in rows]))


def _cmd_datasets(args: argparse.Namespace, settings: Settings) -> int:

    lake = lake_store(args, settings)
    if args.action == "list":
        print_dataset_versions(lake, args.name)
        return 0
    import polars as pl

    from robolake.datasets.build import compare_versions

    with pl.Config(tbl_rows=200, tbl_hide_dataframe_shape=True, tbl_width_chars=120,
                   fmt_str_lengths=40, tbl_hide_column_data_types=True):
        print(compare_versions(lake, args.name, args.a, args.b))
    return 0


def _cmd_summary(args: argparse.Namespace, settings: Settings) -> int:

    print_summary(lake_store(args, settings))
    return 0


def _cmd_gateway(args: argparse.Namespace, _settings=None) -> int:
    from robolake.gateway.server import serve

    serve(args.host, args.port)
    return 0


def _cmd_keys(args: argparse.Namespace, _settings=None) -> int:
    from robolake.gateway.cli import keys_command

    return keys_command(args)


def _cmd_stream_writer(args: argparse.Namespace, _settings=None) -> int:
    from robolake.gateway.cli import stream_writer_command

    return stream_writer_command(args)


def _add_simulate_and_ingest(sub, debug: argparse.ArgumentParser) -> None:
    from robolake.layers import LAYERS
    from robolake.simulate.faults import FAULT_KINDS

    sim = sub.add_parser("simulate", parents=[debug],
                         help="write a simulated fleet day of recordings",
                         description="Write one simulated recording per robot (IMU 100 Hz, GPS "
                                     "1 Hz, LiDAR 10 Hz, camera 30 Hz) and ground_truth.json "
                                     "describing the faults injected.")
    sim.add_argument("--out", required=True, help="folder to write recordings to")
    sim.add_argument("--robots", type=int, default=3,
                     help="number of robots, one recording each (default 3)")
    sim.add_argument("--date", required=True, help="YYYY-MM-DD (UTC)")
    sim.add_argument("--minutes", type=float, default=2.0, help="length of each recording")
    sim.add_argument("--seed", type=int, default=0,
                     help="random seed: the same seed writes the same bytes (default 0)")
    sim.add_argument("--format", choices=["mcap", "bag"], default="mcap")
    sim.add_argument("--faults", action="append", default=[], metavar="KIND[:ROBOT],...",
                     help="comma-separated fault kinds, each optionally KIND:ROBOT_INDEX; "
                          f"kinds: {', '.join(FAULT_KINDS)}")
    sim.set_defaults(func=_cmd_simulate)

    ing = sub.add_parser("ingest", parents=[debug],
                         help="scan the landing zone once and materialize the affected "
                              "partitions in-process",
                         description="Scan the landing zone once, register new robot types and "
                                     "run each (date, robot type) partition with new files "
                                     "through the chosen layer in this process (the runs are "
                                     "recorded in DAGSTER_HOME and show under their jobs in the "
                                     "UI). Running it again does nothing new.")
    ing.add_argument("--through", default="cleaned", choices=LAYERS,
                     help="last layer to build (default: cleaned): raw indexes and copies the "
                          "files, cleaned decodes and aligns, features scores corner cases, "
                          "datasets builds every spec, models trains every config")
    ing.add_argument("--landing", help="landing zone (default $ROBOLAKE_LANDING or ./landing)")
    add_lake_option(ing)
    ing.set_defaults(func=_cmd_ingest)


def _add_metrics_parser(sub, debug) -> None:
    """`robolake metrics` (its module imports Dagster: registered lazily, run on demand)."""
    metrics = sub.add_parser("metrics", parents=[debug],
                             help="serve the pipeline's KPIs for Prometheus (/metrics)")
    metrics.add_argument("--host", default="127.0.0.1")
    metrics.add_argument("--port", type=int, default=9464)

    def run(args, settings):
        from robolake_assets.metrics import serve_metrics

        return serve_metrics(args, settings)

    metrics.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robolake", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    # --debug also after the command; SUPPRESS keeps `robolake --debug CMD` working
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")

    _add_simulate_and_ingest(sub, debug)

    ds = sub.add_parser("datasets", parents=[debug],
                        help="list dataset versions or compare two of them")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    ds_list = ds_sub.add_parser("list", parents=[debug],
                                help="registered versions with samples per split")
    ds_list.add_argument("name", nargs="?", help="only this dataset")
    ds_cmp = ds_sub.add_parser("compare", parents=[debug], help="two versions side by side")
    ds_cmp.add_argument("name")
    ds_cmp.add_argument("a", help="version, e.g. 1.0.0")
    ds_cmp.add_argument("b", help="version, e.g. 1.1.0")
    for p in (ds_list, ds_cmp):
        add_lake_option(p)
    ds.set_defaults(func=_cmd_datasets)

    summ = sub.add_parser("summary", parents=[debug], help="print what the lake holds")
    add_lake_option(summ)
    summ.set_defaults(func=_cmd_summary)

    from robolake_assets.cli_annotations import add_annotation_parsers

    add_annotation_parsers(sub, debug)
    from robolake.gateway.cli import add_gateway_parsers  # the front door (issue 12)

    add_gateway_parsers(sub, debug, _cmd_gateway, _cmd_keys, _cmd_stream_writer)
    from robolake_assets.cli_governance import add_governance_parsers  # issue 13

    add_governance_parsers(sub, debug)
    from robolake_assets.cli_backup import add_backup_parsers  # backups (issue 18)

    add_backup_parsers(sub, debug)
    from robolake_assets.cli_launch import add_launch_parser, add_notify_parser  # issue 17

    add_launch_parser(sub, debug)
    add_notify_parser(sub, debug)
    _add_metrics_parser(sub, debug)
    from robolake_assets.cli_costs import add_cost_parsers  # cost and capacity (issue 14)

    add_cost_parsers(sub, debug)
    return parser


def _explain(exc: BaseException) -> str:
    """One line saying what went wrong and what to do about it."""
    from robolake.errors import is_transient

    text = " ".join(str(exc).split()) or type(exc).__name__
    if is_transient(exc):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        return (f"cannot reach storage{f' at {endpoint}' if endpoint else ''} ({text}); check "
                "the network and AWS_ENDPOINT_URL / credentials, then run the command again "
                "(nothing half-written is kept)")
    if isinstance(exc, ValueError | FileNotFoundError | KeyError | PermissionError):
        return text
    return f"{type(exc).__name__}: {text} (run again with --debug for the traceback)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, argparse printed why)
        return int(exit_.code or 0)
    try:
        # read once per command: the environment plus this command's flags
        return args.func(args, Settings.from_env())
    except KeyboardInterrupt:
        print("robolake: interrupted; re-run the command to finish (writes are idempotent)",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"robolake: error: {_explain(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError | FileNotFoundError | KeyError) else 1


if __name__ == "__main__":
    sys.exit(main())
