"""Compute pools as code: where each asset's step runs on Kubernetes.

`cpu_spot()`, `gpu()` … return the keyword arguments an `@asset` takes:
the `dagster-k8s/config` op tag (node selector, tolerations, resources, GPU
limit) used by `k8s_job_executor`, the Dagster `pool` that the run queue
limits, and the retry policy for preemptible capacity. Locally the tags are
inert and the same definitions run with the default executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg


@dataclass(frozen=True)
class Pool:
    name: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]] = field(default_factory=list)
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    gpus: int = 0
    preemptible: bool = False
    priority: int = 0  # dagster/priority of runs targeting this pool

    def k8s_config(self) -> dict[str, Any]:
        limits = dict(self.limits)
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        return {
            "container_config": {"resources": {"requests": dict(self.requests), "limits": limits}},
            "pod_spec_config": {
                "node_selector": dict(self.node_selector),
                "tolerations": [dict(t) for t in self.tolerations],
            },
            "pod_template_spec_metadata": {"labels": {"robolake/pool": self.name}},
        }

    def retry_policy(self) -> dg.RetryPolicy | None:
        # Spot nodes disappear with two minutes' notice: ETL steps retry, and
        # their writes replace or skip what a killed attempt left.
        if self.preemptible:
            return dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                  jitter=dg.Jitter.PLUS_MINUS)
        return dg.RetryPolicy(max_retries=1, delay=60)

    def asset_kwargs(self) -> dict[str, Any]:
        return {
            "op_tags": {"dagster-k8s/config": self.k8s_config(), "robolake/pool": self.name},
            "pool": self.name,
            "retry_policy": self.retry_policy(),
        }


SPOT_TOLERATION = {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot",
                   "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

CPU_ON_DEMAND = Pool("cpu_on_demand", {"robolake.io/pool": "cpu-on-demand",
                                       "karpenter.sh/capacity-type": "on-demand"},
                     requests={"cpu": "1", "memory": "4Gi"}, limits={"memory": "8Gi"}, priority=10)
CPU_SPOT = Pool("cpu_spot", {"robolake.io/pool": "cpu-spot", "karpenter.sh/capacity-type": "spot"},
                [SPOT_TOLERATION], requests={"cpu": "2", "memory": "8Gi"},
                limits={"memory": "16Gi"}, preemptible=True, priority=0)
GPU_STANDARD = Pool("gpu_standard", {"robolake.io/pool": "gpu-standard"}, [GPU_TOLERATION],
                    requests={"cpu": "4", "memory": "16Gi"}, limits={"memory": "32Gi"}, gpus=1,
                    priority=5)
GPU_HIGH = Pool("gpu_high", {"robolake.io/pool": "gpu-high"}, [GPU_TOLERATION],
                requests={"cpu": "32", "memory": "256Gi"}, limits={"memory": "512Gi"}, gpus=8,
                priority=5)

POOLS = {p.name: p for p in (CPU_ON_DEMAND, CPU_SPOT, GPU_STANDARD, GPU_HIGH)}


def cpu_spot() -> dict[str, Any]:
    return CPU_SPOT.asset_kwargs()


def cpu_on_demand() -> dict[str, Any]:
    return CPU_ON_DEMAND.asset_kwargs()


def gpu(high: bool = False) -> dict[str, Any]:
    return (GPU_HIGH if high else GPU_STANDARD).asset_kwargs()
