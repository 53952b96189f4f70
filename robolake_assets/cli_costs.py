"""`robolake recommend` (and the other cost commands): registered on the main parser by
`add_cost_parsers`, so robolake_assets/cli.py carries one line for them."""

from __future__ import annotations

import argparse
from pathlib import Path

from robolake.settings import Settings
from robolake_assets.cli_common import add_lake_option, lake_store


def _train_samples(config, lake: str) -> int | None:
    """Training samples per epoch of the config's dataset version, if the lake has it."""
    from robolake.datasets.loader import read_manifest
    from robolake.storage import open_store

    try:
        manifest = read_manifest(config.dataset.name, config.dataset.version, open_store(lake))
    except FileNotFoundError:
        return None
    split = manifest["splits"].get(config.dataset.splits.train) or {}
    return split.get("samples")


def _cmd_recommend(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.costs.prices import load_prices
    from robolake.costs.recommend import find_spec, format_table, recommend_for_spec, to_json
    from robolake.datasets.spec import load_spec
    from robolake.models.config import load_config

    config = load_config(args.config)
    if args.spec:
        spec = load_spec(Path(args.spec)).model_dump(mode="json")
    else:
        spec = find_spec(settings.specs_dir, config.dataset.name)
        if spec is None:
            raise ValueError(f"{args.config}: dataset.name: no spec named "
                             f"{config.dataset.name!r} in {settings.specs_dir} (pass --spec)")
    samples = args.samples or _train_samples(config, args.lake or settings.lake)
    rec = recommend_for_spec(config, spec, load_prices(args.prices), samples)
    print(to_json(rec) if args.json else format_table(rec))
    return 0 if rec.chosen is not None else 3


def _cmd_costs_report(args: argparse.Namespace, settings: Settings) -> int:
    from robolake.costs.runs import report

    rows = report(lake_store(args, settings), args.month, args.by)
    if not rows:
        print(f"no costs recorded for {args.month}")
        return 0
    print(f"{args.by:<32}{'USD':>12}{'runs':>8}{'node-hours':>12}{'requests USD':>14}")
    for r in rows:
        print(f"{r[args.by]:<32}{r['usd']:>12.2f}{r['runs']:>8}{r['node_hours']:>12.3f}"
              f"{r['requests_usd']:>14.6f}")
    print(f"{'total':<32}{sum(r['usd'] for r in rows):>12.2f}{'':>20}"
          f"{sum(r['requests_usd'] for r in rows):>14.6f}")
    return 0


def approve_run(instance, run_id: str, who: str, lake) -> str:
    """`robolake runs approve`: let a queued run that a budget (or the approval rule) holds
    start. The approval itself (checks, ops/approvals, audit) is robolake.costs.approvals,
    shared with the platform API; here the run is tagged at once as well."""
    from robolake.costs import approvals
    from robolake.governance import audit
    from robolake_sensors.budgets import apply_approvals

    run = instance.get_run_by_id(run_id)
    if run is None:
        raise ValueError(f"run {run_id}: no such run in {instance.root_directory or 'instance'}")
    view = approvals.RunView(run.run_id, run.job_name, run.status.value, dict(run.tags))
    approval = approvals.approve(lake, view, audit.Actor(f"user:{who}", "admin"))
    apply_approvals(instance, lake, [run_id])
    return approval.message()


def _cmd_runs_approve(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    import dagster as dg

    from robolake.settings import ensure_dagster_home
    from robolake.storage import open_store

    ensure_dagster_home(settings)
    with dg.DagsterInstance.get() as instance:
        print(approve_run(instance, args.run_id, args.by or getpass.getuser(),
                          open_store(settings.lake)))
    return 0


def add_cost_parsers(sub, debug: argparse.ArgumentParser) -> None:
    rec = sub.add_parser("recommend", parents=[debug],
                         help="estimate a training config's peak GPU memory and time per "
                              "epoch, and the cheapest instance type that fits")
    rec.add_argument("config", help="training config YAML")
    rec.add_argument("--json", action="store_true", help="machine-readable output")
    rec.add_argument("--spec", help="dataset spec YAML (default: the one named by the config "
                                    "in $ROBOLAKE_SPECS)")
    rec.add_argument("--samples", type=int,
                     help="training samples per epoch (default: the registered version's)")
    add_lake_option(rec)
    rec.add_argument("--prices", help="price file (default configs/prices.yaml)")
    rec.set_defaults(func=_cmd_recommend)

    costs = sub.add_parser("costs", parents=[debug], help="what runs and storage cost")
    costs_sub = costs.add_subparsers(dest="action", required=True)
    rep = costs_sub.add_parser("report", parents=[debug],
                               help="a month's spend by team, project or job (ops/costs)")
    rep.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    rep.add_argument("--by", default="team", choices=["team", "project", "job", "kind", "pool"])
    add_lake_option(rep)
    rep.set_defaults(func=_cmd_costs_report)

    runs = sub.add_parser("runs", parents=[debug], help="queued runs held by a budget")
    runs_sub = runs.add_subparsers(dest="action", required=True)
    approve = runs_sub.add_parser("approve", parents=[debug],
                                  help="(admin) let a queued run held by a budget start")
    approve.add_argument("run_id")
    approve.add_argument("--by", help="who approves (default: the user name)")
    approve.set_defaults(func=_cmd_runs_approve)
