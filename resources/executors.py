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


def _kueue_k8s_executor() -> dg.ExecutorDefinition:
    """k8s_job_executor whose step handler adds `kueue_container_context`: dagster-k8s
    leaves run tags out of step pods, and the team is a run tag."""
    from dagster_k8s import k8s_job_executor
    from dagster_k8s.executor import K8sStepHandler

    class KueueStepHandler(K8sStepHandler):
        def _get_container_context(self, step_handler_context):
            context = super()._get_container_context(step_handler_context)
            step_key = self._get_step_key(step_handler_context)
            return context.merge(kueue_container_context(
                step_handler_context.dagster_run.tags, step_handler_context.step_tags[step_key]))

    @dg.executor(name="robolake_k8s", config_schema=k8s_job_executor.config_schema,
                 requirements=k8s_job_executor.get_requirements)
    def robolake_k8s(init_context):
        executor = k8s_job_executor.executor_creation_fn(init_context)
        executor._step_handler.__class__ = KueueStepHandler  # same state, one method more
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
