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


def robolake_executor(deployment: str) -> dg.ExecutorDefinition:
    """`k8s_job_executor` configured for Robolake for the `k8s` deployment, else the default."""
    if deployment == K8S:
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(K8S_EXECUTOR_CONFIG, name="robolake_k8s")
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"deployment {deployment!r}: expected one of {', '.join(DEPLOYMENTS)}")
    return dg.multi_or_in_process_executor
