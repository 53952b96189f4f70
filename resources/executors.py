"""The executor, chosen in one place: Kubernetes Jobs in production, processes on a laptop.

The deployment (`robolake.settings`, `ROBOLAKE_DEPLOYMENT=local|k8s`) decides:
`k8s` selects `k8s_job_executor`: each step runs as its
own Kubernetes Job, placed by the `dagster-k8s/config` op tags that
`robolake_resources.pools` attaches to every asset (node selector, tolerations,
resources, GPU limit); `local` (the default) keeps Dagster's default
executor (multiprocess; in-process for `dagster asset materialize` and tests).
The run launcher (K8sRunLauncher, see deploy/helm/values.yaml) supplies the
image, namespace and secrets; the executor adds only what is Robolake's own.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from robolake.settings import DEPLOYMENTS, ENV_VARS

DEPLOYMENT_VAR = ENV_VARS["deployment"]
K8S = "k8s"

# Base Kubernetes config for every step pod; a pool's op tags are merged over it.
STEP_K8S_CONFIG: dict[str, Any] = {
    "job_spec_config": {
        # a failed pod is retried by Dagster (RetryPolicy), not by Kubernetes
        "backoff_limit": 0,
        "ttl_seconds_after_finished": 3600,
    },
    "container_config": {
        "env": [{"name": DEPLOYMENT_VAR, "value": K8S}],
    },
    "pod_spec_config": {
        # Spot reclaim gives two minutes: leave time to close the Delta commit in flight
        "termination_grace_period_seconds": 90,
    },
}

K8S_EXECUTOR_CONFIG: dict[str, Any] = {
    # step pods are garbage-collected with the run pod that launched them
    "enable_owner_references": True,
    # steps of one run at once; pools cap steps across runs
    "max_concurrent": 16,
    "tag_concurrency_limits": [
        {"key": "robolake/pool", "value": "gpu_high", "limit": 1},
    ],
    "retries": {"enabled": {}},
    "step_k8s_config": STEP_K8S_CONFIG,
}


def kueue_container_context(run_tags: dict[str, str], step_tags: dict[str, Any]):
    """What Kueue needs on a step Job (team namespace, LocalQueue and priority labels),
    as a K8sContainerContext merged last over the step's own (pools.kueue_placement)."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    from robolake_resources.pools import kueue_placement

    namespace, config = kueue_placement(run_tags, step_tags)
    return K8sContainerContext(namespace=namespace,
                               run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config))


def placed_container_context(context, run_tags: dict[str, str], step_tags: dict[str, Any],
                             fallback: dict[str, Any] | None = None):
    """The step's container context (executor base and op tags merged) placed for Kueue;
    with `fallback` (robolake_resources.spot.fallback_tags) the pool's part of it is
    replaced by the fallback pool's first, and the Job goes to that pool's queue."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    if fallback is not None:
        context = context.merge(K8sContainerContext(run_k8s_config=(
            UserDefinedDagsterK8sConfig.from_dict(fallback["dagster-k8s/config"]))))
        step_tags = fallback
    return context.merge(kueue_container_context(run_tags, step_tags))


def _kueue_k8s_executor() -> dg.ExecutorDefinition:
    """k8s_job_executor whose step handler adds `kueue_container_context`: dagster-k8s
    leaves run tags out of step pods, and the team is a run tag. It also moves a Spot step
    that lost its capacity twice to the on-demand pool (robolake_resources.spot)."""
    from dagster._core.executor.step_delegating import CheckStepHealthResult
    from dagster_k8s import k8s_job_executor
    from dagster_k8s.executor import K8sStepHandler

    from robolake.costs.spot import CAPACITY_LOST
    from robolake_resources import spot

    class KueueStepHandler(K8sStepHandler):
        def _attempt(self, step_handler_context, step_key: str) -> int:
            known = step_handler_context.execute_step_args.known_state
            return known.get_retry_state().get_attempt_count(step_key) if known else 0

        def _fallback(self, step_handler_context, step_key: str):
            attempt = self._attempt(step_handler_context, step_key)
            run = step_handler_context.dagster_run
            cache = self.__dict__.setdefault("_fallbacks", {})  # health checks ask often
            key = (run.run_id, step_key, attempt)
            if key not in cache:
                cache[key] = spot.fallback_for(step_handler_context.instance, run, step_key,
                                               dict(step_handler_context.step_tags[step_key]),
                                               attempt)
            return cache[key]

        def _get_container_context(self, step_handler_context):
            context = super()._get_container_context(step_handler_context)
            step_key = self._get_step_key(step_handler_context)
            fallback = self._fallback(step_handler_context, step_key)
            return placed_container_context(
                context, step_handler_context.dagster_run.tags,
                step_handler_context.step_tags[step_key], fallback and fallback[0])

        def launch_step(self, step_handler_context):
            step_key = self._get_step_key(step_handler_context)
            fallback = self._fallback(step_handler_context, step_key)
            if fallback is not None:
                spot.record_fallback(step_handler_context.instance,
                                     step_handler_context.dagster_run, step_key,
                                     self._attempt(step_handler_context, step_key),
                                     fallback[1], fallback[0])
            yield from super().launch_step(step_handler_context)

        def check_step_health(self, step_handler_context):
            result = super().check_step_health(step_handler_context)
            if result.is_healthy or "Discovered failed" not in (result.unhealthy_reason or ""):
                return result
            why = spot.failed_pod_disruption(
                self._api_client.core_api,
                self._get_container_context(step_handler_context).namespace,
                f"job-name={self._get_k8s_step_job_name(step_handler_context)}")
            return result if why is None else CheckStepHealthResult.unhealthy(
                f"{result.unhealthy_reason} Spot {CAPACITY_LOST}: {why}")

    @dg.executor(name="robolake_k8s", config_schema=k8s_job_executor.config_schema,
                 requirements=k8s_job_executor.get_requirements)
    def robolake_k8s(init_context):
        executor = k8s_job_executor.executor_creation_fn(init_context)
        executor._step_handler.__class__ = KueueStepHandler  # same state, more methods
        return executor

    return robolake_k8s


def robolake_executor(deployment: str) -> dg.ExecutorDefinition:
    """`k8s_job_executor` configured for Robolake (and Kueue) for the `k8s` deployment,
    else the default."""
    if deployment == K8S:
        return _kueue_k8s_executor().configured(K8S_EXECUTOR_CONFIG, name="robolake_k8s")
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"deployment {deployment!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return dg.multi_or_in_process_executor
