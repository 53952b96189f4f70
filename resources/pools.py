"""Compute pools and run queues as code: where each step runs, and which run goes first.

Pools (where a step runs on Kubernetes): `cpu_spot()`, `cpu_on_demand()`,
`gpu()` return the keyword arguments an `@asset` takes: the
`dagster-k8s/config` op tag (node selector, tolerations, resources, GPU
limit) used by `k8s_job_executor`, the Dagster `pool` whose slots the
instance limits (`POOL_LIMITS`), the step priority within a run, and the
retry policy for preemptible capacity. Locally the tags are inert and the same
definitions run with the default executor. What each pool's nodes are and cost
(instance types, on-demand and Spot prices) is in configs/prices.yaml
(`Pool.prices()`); the Karpenter NodePools list exactly those types.

Run queues (which run the queue launches first): interactive > training >
ETL > batch, as the run tag `dagster/priority` plus a `robolake/queue` tag
that the instance's tag concurrency limits cap (`queue_limits()`), so neither
a backfill of hundreds of partitions nor a burst of uploads can hold every
run slot. A run launched by a person with no tags is interactive: it has the
highest priority (0) and no cap; automated work is tagged lower by its job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from robolake.costs.approvals import HOLD_TAG as APPROVAL_HOLD_TAG
from robolake.costs.prices import PoolPrices, Prices, load_prices
from robolake.errors import CapacityLost, is_transient
from robolake.settings import ENV_VARS

# --------------------------------------------------------------------------- pools

POOL_LABEL = "robolake.io/pool"
DEPLOYMENT_VAR = ENV_VARS["deployment"]  # ROBOLAKE_DEPLOYMENT: k8s in step pods
CAPACITY_TYPE = "karpenter.sh/capacity-type"
INSTANCE_TYPE = "node.kubernetes.io/instance-type"


@dataclass(frozen=True)
class Pool:
    name: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]] = field(default_factory=list)
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)
    gpus: int = 0
    preemptible: bool = False
    priority: int = 0  # dagster/priority of this pool's steps inside a run (training first)
    limit: int = 8  # production: steps of this pool running at once across all runs
    # when set, the node must be one of these types (the recommender's fitting ones)
    instance_types: tuple[str, ...] = ()

    def k8s_config(self) -> dict[str, Any]:
        requests, limits = dict(self.requests), dict(self.limits)
        if self.gpus:
            # extended resources: request == limit; the scheduler counts whole devices
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(self.gpus)
        annotations = {}
        if not self.preemptible:
            # consolidation must not evict a training step or an on-demand step mid-run
            annotations["karpenter.sh/do-not-disrupt"] = "true"
        pod_spec: dict[str, Any] = {"node_selector": dict(self.node_selector),
                                    "tolerations": [dict(t) for t in self.tolerations]}
        if self.instance_types:
            pod_spec["affinity"] = {"node_affinity": {
                "required_during_scheduling_ignored_during_execution": {"node_selector_terms": [
                    {"match_expressions": [{"key": INSTANCE_TYPE, "operator": "In",
                                            "values": list(self.instance_types)}]}]}}}
        return {
            "container_config": {"resources": {"requests": requests, "limits": limits}},
            "pod_spec_config": pod_spec,
            "pod_template_spec_metadata": {"labels": {POOL_LABEL: self.label},
                                           "annotations": annotations},
        }

    @property
    def label(self) -> str:
        return self.node_selector[POOL_LABEL]

    @property
    def spot(self) -> bool:
        return self.node_selector.get(CAPACITY_TYPE) == "spot"

    def prices(self, prices: Prices | None = None) -> PoolPrices:
        """This pool's instance types and their prices: configs/prices.yaml is the one
        list (the Karpenter NodePool allows exactly these types)."""
        return (prices or load_prices()).pool(self.name)

    def retry_policy(self) -> dg.RetryPolicy:
        # Spot nodes disappear with two minutes' notice: ETL steps retry, and
        # their writes replace or skip what a killed attempt left. Only capacity and
        # network failures reach this policy: `retry_only_transient` fails the rest at once.
        if self.preemptible:
            return dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                  jitter=dg.Jitter.PLUS_MINUS)
        return dg.RetryPolicy(max_retries=1, delay=60)

    def op_tags(self) -> dict[str, Any]:
        return {"dagster-k8s/config": self.k8s_config(), "robolake/pool": self.name,
                "dagster/priority": str(self.priority)}

    def asset_kwargs(self) -> dict[str, Any]:
        return {"op_tags": self.op_tags(), "pool": self.name,
                "retry_policy": self.retry_policy()}

    def kueue_config(self, team: str, queue: str) -> dict[str, Any]:
        """dagster-k8s config that puts this pool's step Job in the team's Kueue LocalQueue
        for this pool, with the run queue's WorkloadPriorityClass (deploy/kueue/)."""
        labels = {KUEUE_QUEUE_LABEL: self.label, KUEUE_PRIORITY_LABEL: priority_class(queue),
                  TEAM_LABEL: team_name(team)}
        # Kueue reads the Job's labels; the pod carries them too, for people and metrics
        return {"job_metadata": {"labels": dict(labels)},
                "pod_template_spec_metadata": {"labels": dict(labels)}}

    def op_kwargs(self) -> dict[str, Any]:
        """The same for an `@dg.op` (jobs of ops: maintenance, backups)."""
        return {"tags": self.op_tags(), "pool": self.name, "retry_policy": self.retry_policy()}


SPOT_TOLERATION = {"key": CAPACITY_TYPE, "operator": "Equal", "value": "spot",
                   "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# A100/H100 nodes carry their own taint, so a one-GPU step never lands on an 8-GPU node.
GPU_HIGH_TOLERATION = {"key": POOL_LABEL, "operator": "Equal", "value": "gpu-high",
                       "effect": "NoSchedule"}

CPU_ON_DEMAND = Pool("cpu_on_demand", {POOL_LABEL: "cpu-on-demand", CAPACITY_TYPE: "on-demand"},
                     requests={"cpu": "1", "memory": "4Gi"}, limits={"memory": "8Gi"},
                     priority=5, limit=16)
CPU_SPOT = Pool("cpu_spot", {POOL_LABEL: "cpu-spot", CAPACITY_TYPE: "spot"}, [SPOT_TOLERATION],
                requests={"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi"},
                limits={"memory": "16Gi", "ephemeral-storage": "40Gi"}, preemptible=True,
                priority=0, limit=64)
GPU_STANDARD = Pool("gpu_standard", {POOL_LABEL: "gpu-standard", CAPACITY_TYPE: "on-demand"},
                    [GPU_TOLERATION], requests={"cpu": "4", "memory": "16Gi"},
                    limits={"memory": "32Gi"}, gpus=1, priority=10, limit=8)
GPU_HIGH = Pool("gpu_high", {POOL_LABEL: "gpu-high", CAPACITY_TYPE: "on-demand"},
                [GPU_TOLERATION, GPU_HIGH_TOLERATION], requests={"cpu": "32", "memory": "256Gi"},
                limits={"memory": "512Gi"}, gpus=8, priority=10, limit=2)

POOLS = {p.name: p for p in (CPU_ON_DEMAND, CPU_SPOT, GPU_STANDARD, GPU_HIGH)}
# Steps of a pool running at once across the production instance (`dagster instance
# concurrency` state, applied by `python -m robolake_resources.pools`; laptops use the
# default limit).
POOL_LIMITS = {p.name: p.limit for p in POOLS.values()}


@contextlib.contextmanager
def retry_only_transient() -> Iterator[None]:
    """Around an asset's body: a failure the same input would cause again (bad data, bad
    config, a bug) fails the step at once instead of waiting through the pool's retries;
    lost capacity and network errors still retry."""
    from dagster._core.errors import DagsterExecutionInterruptedError

    try:
        yield
    except dg.Failure:
        raise
    except DagsterExecutionInterruptedError as exc:
        if os.environ.get(DEPLOYMENT_VAR) != "k8s":
            raise  # a person's Ctrl-C or a terminated run: stop
        # On Kubernetes the step's pod is being deleted (SIGTERM, which Dagster turns into
        # an interrupt): a Spot reclaim or a node drain. A retry can succeed elsewhere, and
        # robolake.costs.spot counts it as lost capacity.
        raise CapacityLost("SIGTERM: the step's pod is being deleted") from exc
    except Exception as exc:
        if is_transient(exc):
            raise
        raise dg.Failure(
            description=f"{type(exc).__name__}: {exc} (not retried: the same input fails the "
                        "same way; a lost node or network error would have been retried)",
            allow_retries=False) from exc


def cpu_spot() -> dict[str, Any]:
    return CPU_SPOT.asset_kwargs()


def cpu_on_demand() -> dict[str, Any]:
    return CPU_ON_DEMAND.asset_kwargs()


def gpu(high: bool = False) -> dict[str, Any]:
    return (GPU_HIGH if high else GPU_STANDARD).asset_kwargs()


def gpu_sized(pool: str, gpus: int, instance_types: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A GPU step sized by the instance recommender (robolake.costs.recommend): `gpus`
    devices (one per training process) on one of `instance_types` of `pool`. A part of
    a multi-GPU node asks for the same part of its CPUs and memory."""
    base = POOLS[pool]
    if not base.gpus or not 1 <= gpus <= base.gpus:
        raise ValueError(f"pool {pool} cannot give a step {gpus} GPU(s) (it has {base.gpus})")

    def part(quantities: dict[str, str]) -> dict[str, str]:
        if gpus == base.gpus:
            return dict(quantities)
        return {k: _scaled(v, gpus / base.gpus) for k, v in quantities.items()}

    sized = dataclasses.replace(base, gpus=gpus, requests=part(base.requests),
                                limits=part(base.limits), instance_types=tuple(instance_types))
    return sized.asset_kwargs()


def _scaled(quantity: str, factor: float) -> str:
    """A CPU or memory quantity times `factor`, rounded up (cores, or Gi)."""
    if quantity.endswith("Gi"):
        return f"{math.ceil(float(quantity[:-2]) * factor)}Gi"
    return str(math.ceil(float(quantity) * factor))


def apply_pool_limits(instance: dg.DagsterInstance,
                      limits: dict[str, int] | None = None) -> dict[str, int]:
    """Set each pool's slot count on the instance (idempotent); returns what was set."""
    limits = dict(POOL_LIMITS if limits is None else limits)
    for name, slots in limits.items():
        instance.event_log_storage.set_concurrency_slots(name, slots)
    return limits


# --------------------------------------------------------------------------- Kueue

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
TEAM_TAG = "robolake/team"  # run tag: whose quota a run's steps use
TEAM_LABEL = "robolake.io/team"
DEFAULT_TEAM = "platform"  # runs without the tag (schedules, sensors) are the platform's
_TEAM_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")


def team_name(team: str) -> str:
    if not _TEAM_RE.match(team or ""):
        raise ValueError(f"run tag {TEAM_TAG}={team!r}: expected a lower-case DNS label "
                         "(a-z, 0-9, '-'), e.g. perception")
    return team


def team_namespace(team: str) -> str:
    """The namespace of a team's step Jobs (holds its Kueue LocalQueues)."""
    return f"team-{team_name(team)}"


def priority_class(queue: str) -> str:
    """The Kueue WorkloadPriorityClass of a run queue."""
    queue_tags(queue)  # a known queue
    return f"robolake-{queue}"


def priority_value(queue: str) -> int:
    """Kueue priority: the Dagster order kept (interactive 1000 > training 900 > etl 800 >
    batch 700), so training preempts ETL and batch work, never the other way round."""
    return 1000 + 10 * QUEUES[queue].priority


def kueue_placement(run_tags: dict[str, str], step_tags: dict[str, Any]
                    ) -> tuple[str, dict[str, Any]]:
    """(namespace, dagster-k8s config) of a step: its pool from the op's `robolake/pool`
    tag, team and queue from the run's `robolake/team` and `robolake/queue` tags (an
    untagged run is the platform team's, interactive)."""
    pool = POOLS[step_tags["robolake/pool"]]
    team = run_tags.get(TEAM_TAG) or DEFAULT_TEAM
    queue = run_tags.get(QUEUE_TAG) or INTERACTIVE.name
    return team_namespace(team), pool.kueue_config(team, queue)


# --------------------------------------------------------------------------- run queues

PRIORITY_TAG = "dagster/priority"
QUEUE_TAG = "robolake/queue"
BACKFILL_TAG = "dagster/backfill"


@dataclass(frozen=True)
class RunQueue:
    name: str
    priority: int  # run tag dagster/priority: higher is dequeued first
    local_limit: int | None  # runs of this queue in progress at once (None: no cap)
    production_limit: int | None

    def tags(self) -> dict[str, str]:
        return {PRIORITY_TAG: str(self.priority), QUEUE_TAG: self.name}


INTERACTIVE = RunQueue("interactive", 0, None, None)
TRAINING = RunQueue("training", -10, 1, 8)
ETL = RunQueue("etl", -20, 2, 20)
BATCH = RunQueue("batch", -30, 1, 8)
QUEUES = {q.name: q for q in (INTERACTIVE, TRAINING, ETL, BATCH)}

# Every run at once; a backfill (any, tagged or not) holds at most BACKFILL_LIMIT of them.
MAX_CONCURRENT_RUNS = {"local": 5, "production": 60}
BACKFILL_LIMIT = {"local": 2, "production": 12}
# A run tagged robolake/hold=budget (its team or project spent its month's budget) or
# =approval (expensive GPU work) stays queued: no slot for it, ever. The budget sensor
# sets and lifts the tag (sensors/budgets.py); `robolake runs approve` lifts it.
HOLD_TAG = APPROVAL_HOLD_TAG  # robolake/hold (robolake.costs.approvals)
HOLD_LIMITS = [{"key": HOLD_TAG, "value": "budget", "limit": 0},
               {"key": HOLD_TAG, "value": "approval", "limit": 0}]
# Laptop only: the upload sensor's runs (ETL) share the machine with the UI's.
LOCAL_EXTRA_TAG_LIMITS = [{"key": "robolake/trigger", "value": "new_uploads_sensor", "limit": 2}]


def queue_tags(queue: str) -> dict[str, str]:
    """Run tags for a job or run request of this queue (interactive, training, etl, batch)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown run queue {queue!r}; expected one of {', '.join(QUEUES)}")
    return QUEUES[queue].tags()


def queue_limits(deployment: str) -> list[dict[str, Any]]:
    """The instance's tag_concurrency_limits for `local` (dagster.yaml) or `production` (Helm)."""
    if deployment not in MAX_CONCURRENT_RUNS:
        raise ValueError(f"unknown deployment {deployment!r}; expected local or production")
    limits: list[dict[str, Any]] = []
    for q in QUEUES.values():
        cap = q.local_limit if deployment == "local" else q.production_limit
        if cap is not None:
            limits.append({"key": QUEUE_TAG, "value": q.name, "limit": cap})
    limits.append({"key": BACKFILL_TAG, "limit": BACKFILL_LIMIT[deployment]})
    limits += [dict(x) for x in HOLD_LIMITS]
    if deployment == "local":
        limits += [dict(x) for x in LOCAL_EXTRA_TAG_LIMITS]
    return limits


def main(argv: list[str] | None = None) -> int:
    """`python -m robolake_resources.pools`: set the production pool limits on
    $DAGSTER_HOME's instance."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m robolake_resources.pools",
                                     description=main.__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print the limits, set nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        for name, slots in POOL_LIMITS.items():
            print(f"{name}\t{slots}")
        return 0
    with dg.DagsterInstance.get() as instance:
        for name, slots in apply_pool_limits(instance).items():
            print(f"pool {name}: {slots} slots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def k8s_requests(tags: dict) -> dict[str, str]:
    """The container resource requests a step's `dagster-k8s/config` tag asks for."""
    config = tags.get("dagster-k8s/config") or {}
    config = json.loads(config) if isinstance(config, str) else config
    resources = (config.get("container_config") or {}).get("resources") or {}
    return {k: str(v) for k, v in (resources.get("requests") or {}).items()}
