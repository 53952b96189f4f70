"""`budget_sensor`: monthly budgets per team and project (configs/budgets.yaml).

Every tick it adds the month's spend (ops/costs) and the estimated cost of the
queued runs (each job's average run so far, else its steps' pools for
`queued_run_hours`) per team and project and compares it with the budget:

- at 70 / 85 / 95 % (info, warning, alert) and 100 % it posts a Slack-compatible
  message to the team's webhook and records it in `ops/alerts`, once per threshold,
  scope and month (the alert's key; a re-run tick or a restart never repeats one);
- at 100 % it tags the scope's queued runs `robolake/hold=budget`, which the run
  queue never launches (a tag concurrency limit of 0 in dagster.yaml): they wait,
  not fail. Runs tagged `robolake/critical=true` or approved by an admin
  (`robolake runs approve RUN_ID`) still go. When the budget is raised (or a new
  month starts) the next tick lifts the hold (`robolake/hold=released`).
"""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg

from robolake.costs import approvals as A
from robolake.costs import budgets as B
from robolake.costs import runs as C
from robolake.costs.prices import load_prices
from robolake_resources.lake import LakeResource
from robolake_resources.pools import HOLD_TAG
from robolake_sensors.costs import planned_cost

APPROVED_TAG = A.APPROVED_TAG
GPU_HOURS_TAG = "robolake/gpu_hours"


def _job_averages(lake) -> dict[str, tuple[float, float]]:
    """Per job: its average run's (USD, GPU-hours) so far."""
    prices = load_prices()
    rows = C.read_costs(lake, {"kind": "compute"})
    totals: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        run = totals.setdefault(r["job_name"], {}).setdefault(r["run_id"], [0.0, 0.0])
        run[0] += r["usd"]
        if r["pool"] in prices.pools:
            run[1] += r["quantity"] * prices.pool(r["pool"]).reference_type.gpus
    return {job: (sum(v[0] for v in runs.values()) / len(runs),
                  sum(v[1] for v in runs.values()) / len(runs))
            for job, runs in totals.items()}


def gpu_hours_estimate(run: dg.DagsterRun, averages: dict[str, tuple[float, float]]) -> float:
    """The launcher's own estimate (tag robolake/gpu_hours), else the job's average run."""
    try:
        return float(run.tags[GPU_HOURS_TAG])
    except (KeyError, ValueError):
        return averages.get(run.job_name, (0.0, 0.0))[1]


def queued_costs(instance: dg.DagsterInstance, lake, budgets: B.Budgets
                 ) -> list[tuple[dg.DagsterRun, float, float]]:
    """Each queued run with its estimated cost (USD) and GPU-hours."""
    averages = _job_averages(lake)
    queued = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
    return [(run, averages.get(run.job_name, (0.0, 0.0))[0]
             or planned_cost(instance, run, budgets.queued_run_hours),
             gpu_hours_estimate(run, averages)) for run in queued]


def hold_reason(run: dg.DagsterRun, over: set[tuple[str, str]], gpu_hours: float,
                budgets: B.Budgets) -> str | None:
    """Why a queued run must wait: approval (expensive GPU work), budget, or None."""
    if run.tags.get(APPROVED_TAG):
        return None
    if budgets.approval_gpu_hours and gpu_hours > budgets.approval_gpu_hours:
        return "approval"  # even a critical run: someone must agree to spend this much
    team, project = C.owner(dict(run.tags))
    if (("team", team) in over or ("project", project) in over) and not exempt(run):
        return "budget"
    return None


def exempt(run: dg.DagsterRun) -> bool:
    return run.tags.get(C.CRITICAL_TAG, "").lower() == "true" or bool(run.tags.get(APPROVED_TAG))


def apply_approvals(instance: dg.DagsterInstance, lake, run_ids: list[str] | None = None
                    ) -> list[str]:
    """Tag the queued runs approved in ops/approvals (by the CLI or the platform API) but
    not tagged yet, so the queue may start them; returns those runs."""
    queued = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED],
                                             run_ids=run_ids))
    waiting = {r.run_id: r for r in queued if not r.tags.get(APPROVED_TAG)}
    applied = []
    for row in A.approvals_of(lake, sorted(waiting)):
        instance.add_run_tags(row["run_id"], A.approval_tags(row["approved_by"],
                                                             row["approved_ns"]))
        applied.append(row["run_id"])
    return applied


def _send(row: dict, log) -> None:
    url = os.environ.get(row["webhook_env"], "") if row["webhook_env"] else ""
    if not url:
        log.info(f"budget {row['level']} for {row['scope']} {row['name']} (no webhook)")
        return
    try:
        B.post_webhook(url, B.slack_payload(row))
    except OSError as exc:  # recorded in ops/alerts already; say so rather than fail the tick
        log.warning(f"budget {row['alert_id']}: webhook ${row['webhook_env']} failed: {exc}")


def evaluate_budgets(instance: dg.DagsterInstance, lake, log, now: dt.datetime | None = None
                     ) -> dict:
    """One tick: alerts sent, runs held and released."""
    budgets = B.load_budgets()
    month = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m")
    approved = apply_approvals(instance, lake)  # before holds are decided: they let it go
    spent = {scope: C.spend(lake, month, scope) for scope in ("team", "project")}
    queued = queued_costs(instance, lake, budgets)
    estimate: dict[str, dict[str, float]] = {"team": {}, "project": {}}
    for run, usd, _gpu_hours in queued:
        team, project = C.owner(dict(run.tags))
        estimate["team"][team] = estimate["team"].get(team, 0.0) + usd
        estimate["project"][project] = estimate["project"].get(project, 0.0) + usd
    statuses = B.statuses(budgets, spent, estimate)
    rows = [row for s in statuses for row in B.alert_rows(budgets, s, month)]
    sent = B.record_alerts(lake, rows)
    for row in sent:
        _send(row, log)
    over = {(s.scope, s.name) for s in statuses if s.over(budgets.thresholds)}
    held, released = [], []
    for run, _usd, gpu_hours in queued:
        reason, current = hold_reason(run, over, gpu_hours, budgets), run.tags.get(HOLD_TAG)
        if reason and current != reason:
            instance.add_run_tags(run.run_id, {HOLD_TAG: reason})
            held.append(run.run_id)
        elif not reason and current in ("budget", "approval"):
            instance.add_run_tags(run.run_id, {HOLD_TAG: "released"})
            released.append(run.run_id)
    return {"month": month, "alerts": [r["alert_id"] for r in sent], "held": held,
            "released": released, "approved": approved, "statuses": statuses}


@dg.sensor(name="budget_sensor", minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Monthly budgets per team and project: alerts at 70/85/95 % "
                       "(webhook + ops/alerts), queued runs held at 100 %.")
def budget_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    result = evaluate_budgets(context.instance, lake.store(), context.log)
    return dg.SkipReason(f"{result['month']}: {len(result['alerts'])} alert(s), "
                         f"{len(result['held'])} run(s) held, {len(result['released'])} "
                         "released")
