"""`run_costs_sensor`: the cost of every finished run, step by step, into `ops/costs`.

For each run that finished (success, failure or cancel) since its cursor, it reads
the run's step starts and ends from the event log and what each step asked for from
the run's execution plan (the `robolake/pool` and `dagster-k8s/config` step tags), and
prices them with robolake.costs.runs, plus the run's object-store requests (PUTs of its
Delta commits from the audit log, GETs of its dataset builds' inputs: robolake.costs
.requests). A run's rows replace any earlier ones, so a
re-evaluated tick or a reset cursor never double counts. A laptop's runs are priced as
if they ran in their pools (what they would cost in production).
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from robolake.costs import requests as R
from robolake.costs import runs as C
from robolake.costs.prices import load_prices
from robolake.costs.spot import FALLBACK_POOLS as FALLBACKS
from robolake_resources import pools, spot
from robolake_resources.lake import LakeResource

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED]
# an attempt ends in success, failure or a retry (whose time is paid for too)
_ENDS = (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
         dg.DagsterEventType.STEP_UP_FOR_RETRY)
# a retried attempt starts with STEP_RESTARTED, not STEP_START
_STARTS = (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED)
_STEP_EVENTS = {dg.DagsterEventType.ASSET_MATERIALIZATION, *_STARTS, *_ENDS}


def _attempt_placement(step_tags: dict, moved: dict[str, tuple[int, int]], key: str,
                       attempt: int) -> tuple[str | None, dict[str, str]]:
    """(pool, requests) of one attempt of a step: its op's, or the on-demand pool's from the
    attempt a Spot fallback moved it (robolake_resources.spot)."""
    tags = step_tags.get(key, {})
    if key in moved and attempt >= moved[key][0] and tags.get("robolake/pool") in FALLBACKS:
        tags = spot.fallback_tags(tags, FALLBACKS[tags["robolake/pool"]])
    pool = tags.get("robolake/pool")
    return (pool if pool in pools.POOLS else None), pools.k8s_requests(tags)


def step_usages(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[C.StepUsage]:
    """Each step of a run: its pool and requests, its attempts' total time, its assets.
    Attempts a Spot fallback moved are a usage of their own (`<step>@<pool>`)."""
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    step_tags = {s.key: dict(s.tags or {}) for s in plan.steps}
    moved = spot.fallback_attempts(dict(run.tags))
    starts: dict[str, tuple[int, tuple]] = {}  # step -> (start ns, (pool, requests))
    attempts: dict[str, int] = {}
    spans: dict[tuple, list] = {}  # (step, pool) -> [first start, seconds in ns, requests]
    assets: dict[str, list[str]] = {}
    for entry in instance.all_logs(run.run_id, of_type=_STEP_EVENTS):
        event, key = entry.dagster_event, entry.step_key
        if event is None or key is None:
            continue
        ns = int(entry.timestamp * 1e9)
        if event.event_type in _STARTS:
            attempts[key] = attempts.get(key, 0) + 1
            placed = _attempt_placement(step_tags, moved, key, attempts[key] - 1)
            starts[key] = (ns, placed)
            spans.setdefault((key, placed[0]), [ns, 0, placed[1]])
        elif event.event_type in _ENDS and key in starts:
            start, (pool, _requests) = starts.pop(key)
            spans[(key, pool)][1] += ns - start
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            assets.setdefault(key, []).append(event.asset_key.to_user_string())
    usages = []
    for (key, pool), (first, busy, requests) in sorted(spans.items(),
                                                        key=lambda kv: kv[1][0]):
        own = step_tags.get(key, {}).get("robolake/pool")
        usages.append(C.StepUsage(key if pool == own or pool is None else f"{key}@{pool}",
                                  pool, first, first + busy, requests,
                                  ",".join(sorted(set(assets.get(key, []))))))
    return usages


def pytorchjob_usages(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[C.StepUsage]:
    """The pods of each PyTorchJob a training step submitted and waited for (its
    materialization's `pytorchjob_pods`): one usage per pod, for the time the step waited."""
    usages = []
    for entry in instance.all_logs(run.run_id,
                                   of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.asset_materialization
        pods = mat.metadata.get("pytorchjob_pods") if mat else None
        if pods is not None:
            g = pods.value
            usages += [C.StepUsage(f"{entry.step_key}@pytorchjob/{i}", g["pool"], g["start_ns"],
                                   g["end_ns"], g["requests"], mat.asset_key.to_user_string())
                       for i in range(g["replicas"])]
    return usages


def dataset_reads(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[tuple[str, int]]:
    """(table, Delta version) of every input a dataset build of the run read (its
    materializations' `input_delta_versions`)."""
    reads = []
    for entry in instance.all_logs(run.run_id,
                                   of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        meta = entry.asset_materialization.metadata if entry.asset_materialization else {}
        versions = meta.get("input_delta_versions")
        if versions is not None:
            reads += [(k, int(v)) for k, v in sorted(versions.value.items())]
    return reads


def request_cost_rows(instance: dg.DagsterInstance, run: dg.DagsterRun, lake,
                      info: dict) -> list[dict]:
    """The run's object-store requests: PUTs of its Delta commits (audit log), GETs of its
    dataset builds' inputs (robolake.costs.requests)."""
    stats = instance.get_run_stats(run.run_id)
    end = stats.end_time or stats.start_time or stats.launch_time
    if end is None:
        return []
    start_ns, end_ns = int((stats.start_time or end) * 1e9), int(end * 1e9)
    puts = R.put_counts(lake, run.run_id, R.run_dates(start_ns, end_ns))
    gets = R.get_counts(lake, dataset_reads(instance, run))
    return R.request_rows(info, puts, gets, load_prices(), end_ns)


def run_cost_rows(instance: dg.DagsterInstance, run: dg.DagsterRun, lake=None) -> list[dict]:
    """Each step's compute and (with `lake`) the run's object-store requests."""
    prices = load_prices()
    info = {"run_id": run.run_id, "job_name": run.job_name, "tags": dict(run.tags)}
    rows = [C.step_cost_row(info, u, prices, bool(u.pool) and pools.POOLS[u.pool].spot)
            for u in step_usages(instance, run) + pytorchjob_usages(instance, run)]
    return rows + (request_cost_rows(instance, run, lake, info) if lake is not None else [])


def record_finished_runs(instance: dg.DagsterInstance, lake, after: float | None,
                         limit: int = 50) -> tuple[float | None, list[str]]:
    """Price the runs that finished after `after` (update time); returns the new cursor
    and the runs recorded."""
    filters = dg.RunsFilter(statuses=FINISHED, updated_after=(
        datetime.fromtimestamp(after, UTC) if after else None))
    records = instance.get_run_records(filters=filters, limit=limit,
                                       order_by="update_timestamp", ascending=True)
    done = []
    for record in records:
        C.record_run_costs(lake, record.dagster_run.run_id,
                           run_cost_rows(instance, record.dagster_run, lake))
        done.append(record.dagster_run.run_id)
        after = record.update_timestamp.timestamp()
    return after, done


@dg.sensor(name="run_costs_sensor", minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Prices each finished run's steps (duration x share of the node asked "
                       "for x the pool's price) into the Delta table ops/costs.")
def run_costs_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    after = float(context.cursor) if context.cursor else None
    cursor, done = record_finished_runs(context.instance, lake.store(), after)
    if done:
        context.log.info(f"priced {len(done)} run(s) into {C.COSTS}")
        context.update_cursor(str(cursor))
    return dg.SkipReason(f"priced {len(done)} finished run(s)")


def planned_cost(instance: dg.DagsterInstance, run: dg.DagsterRun, hours: float) -> float:
    """What a run that has not started would cost if each of its steps ran `hours`."""
    if not run.execution_plan_snapshot_id:
        return 0.0  # nothing known about its steps
    prices = load_prices()
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    total = 0.0
    for step in plan.steps:
        tags = dict(step.tags or {})
        pool = tags.get("robolake/pool")
        if pool not in pools.POOLS:
            continue
        usage = C.StepUsage(step.key, pool, 0, int(hours * 3600e9), pools.k8s_requests(tags))
        total += C.step_cost_row({"run_id": run.run_id, "job_name": run.job_name, "tags": {}},
                                 usage, prices, pools.POOLS[pool].spot)["usd"]
    return total
