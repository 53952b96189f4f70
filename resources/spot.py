"""Spot fallback in the Dagster layer: count a step's capacity losses in the event log and
move its next attempt to the on-demand CPU pool (robolake.costs.spot decides).

The Kueue step handler (robolake_resources.executors) asks `fallback_for` before each
attempt of a step; with a fallback the attempt's Job gets the on-demand pool's node
selector, tolerations, labels and Kueue LocalQueue, sized as the Spot step asked, and
`record_fallback` tags the run `robolake/spot_fallback` (the steps moved, with their
losses) and writes an engine event in its log.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import dagster as dg
from dagster._core.events import EngineEventData
from dagster._utils.error import SerializableErrorInfo

from robolake.costs import spot
from robolake_resources import pools

FALLBACK_TAG = "robolake/spot_fallback"  # run tag: "step@attempt=losses,..." (moved)
_ATTEMPT_ENDS = {dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_FAILURE}
_CANCELING = dg.DagsterEventType.RUN_CANCELING


def error_chain(error: SerializableErrorInfo | None) -> list[tuple[str | None, str]]:
    """(class name, message) of an error and its causes and contexts, outer first."""
    chain, todo = [], [error]
    while todo and len(chain) < 32:
        err = todo.pop(0)
        if err is None:
            continue
        chain.append((err.cls_name, err.message))
        todo += [err.cause, err.context]
    return chain


def retry_chain(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The run and the runs it was re-executed from (run_retries, a UI re-execution),
    oldest first: the attempts that came before this one."""
    ids, current = [], run
    while current is not None and len(ids) < 50 and current.run_id not in ids:
        ids.insert(0, current.run_id)
        current = instance.get_run_by_id(current.parent_run_id) if current.parent_run_id \
            else None
    return ids


def capacity_losses(instance: dg.DagsterInstance, run: dg.DagsterRun, step_key: str) -> int:
    """Attempts of `step_key` that lost their capacity, in this run and those it was
    re-executed from. A run that someone terminated (UI, CLI, GraphQL) gets SIGTERM in
    its step pods as a Spot reclaim would: its attempts that ended once the run was being
    cancelled are not capacity losses."""
    attempts = []
    for run_id in retry_chain(instance, run):
        for entry in instance.all_logs(run_id, of_type=_ATTEMPT_ENDS | {_CANCELING}):
            if entry.dagster_event is None:
                continue
            if entry.dagster_event.event_type == _CANCELING:
                break  # what ends after this was ended by the termination
            if entry.step_key == step_key:
                data = entry.dagster_event.event_specific_data
                attempts.append(error_chain(getattr(data, "error", None)))
    return spot.count_capacity_losses(attempts)


def _k8s_config(step_tags: dict) -> dict:
    config = step_tags.get("dagster-k8s/config") or {}
    return json.loads(config) if isinstance(config, str) else dict(config)


def fallback_tags(step_tags: dict, pool_name: str) -> dict[str, Any]:
    """The step's op tags on `pool_name`: that pool's node selector, tolerations, labels and
    annotations, with the CPU and memory the step asked for (only the resources that
    pool's Kueue queue covers: the on-demand pool meters no ephemeral storage)."""
    target = pools.POOLS[pool_name]
    resources = _k8s_config(step_tags).get("container_config", {}).get("resources", {})
    requests = {k: str(v) for k, v in (resources.get("requests") or {}).items()
                if k in target.requests}
    limits = {k: str(v) for k, v in (resources.get("limits") or {}).items()
              if k in target.limits}
    sized = dataclasses.replace(target, requests={**target.requests, **requests},
                                limits={**target.limits, **limits})
    config = {**sized.k8s_config(), "merge_behavior": "SHALLOW"}  # replaces, not appends
    return {**step_tags, **sized.op_tags(), "dagster-k8s/config": config,
            FALLBACK_TAG: step_tags.get("robolake/pool", "")}


def fallback_for(instance: dg.DagsterInstance, run: dg.DagsterRun, step_key: str,
                 step_tags: dict, attempt: int) -> tuple[dict[str, Any], int] | None:
    """(op tags for this attempt of the step, capacity losses so far) when it falls back
    from Spot, else None. The first attempt of a first run has lost nothing: no query."""
    pool = step_tags.get("robolake/pool")
    if pool not in spot.FALLBACK_POOLS or (attempt == 0 and not run.parent_run_id):
        return None
    losses = capacity_losses(instance, run, step_key)
    target = spot.fallback_pool(pool, losses)
    return (fallback_tags(step_tags, target), losses) if target else None


def fallback_attempts(run_tags: dict[str, str]) -> dict[str, tuple[int, int]]:
    """step -> (first attempt moved to on-demand, capacity losses then), from the run's
    `robolake/spot_fallback` tag ("step@attempt=losses,...")."""
    moved = {}
    for part in filter(None, run_tags.get(FALLBACK_TAG, "").split(",")):
        step_attempt, losses = part.rsplit("=", 1)
        step, attempt = step_attempt.rsplit("@", 1)
        moved[step] = (int(attempt), int(losses))
    return moved


def record_fallback(instance: dg.DagsterInstance, run: dg.DagsterRun, step_key: str,
                    attempt: int, losses: int, tags: dict[str, Any]) -> None:
    """Say so on the run: the `robolake/spot_fallback` tag (the step, the attempt it
    moved at, its losses; read back by `fallback_attempts`) and an engine event."""
    current = instance.get_run_by_id(run.run_id) or run
    moved = fallback_attempts(dict(current.tags))
    moved.setdefault(step_key, (attempt, losses))  # the first attempt moved stays
    instance.add_run_tags(run.run_id, {FALLBACK_TAG: ",".join(
        f"{step}@{a}={n}" for step, (a, n) in sorted(moved.items()))})
    pool = tags["robolake/pool"]
    instance.report_engine_event(
        f"Step {step_key} lost its Spot capacity {losses} times: attempt {attempt} runs on "
        f"{pool}", run, EngineEventData(metadata={
            "step": step_key, "attempt": attempt, "capacity_losses": losses, "pool": pool,
            "from_pool": tags[FALLBACK_TAG]}), step_key=step_key)


def failed_pod_disruption(core_api, namespace: str, selector: str) -> str | None:
    """Why Kubernetes took a pod of a failed job away for capacity (robolake.costs.spot
    .pod_disruption), or None: the pods failed on their own, or the API cannot say. The
    job's pods are those of the label `selector` (a step Job's: `job-name=<name>`)."""
    import kubernetes

    try:
        found = core_api.list_namespaced_pod(namespace, label_selector=selector)
    except Exception:  # noqa: BLE001 - any API trouble: the failure stands, reason unknown
        return None
    serialize = kubernetes.client.ApiClient().sanitize_for_serialization
    for pod in found.items:
        why = spot.pod_disruption(serialize(pod))
        if why:
            return f"pod {pod.metadata.name}: {why}"
    return None
