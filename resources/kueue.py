"""Kueue manifests as code: team quotas per pool, lending through a cohort tree, priorities.

Generated from the pools (`robolake_resources.pools`) and `TEAMS` below, written to
deploy/kueue/queues.yaml by `python -m robolake_resources.kueue` (tests/test_kueue.py
checks the file is current and valid against Kueue's own CRD schemas):

- a `ResourceFlavor` per pool (its node labels and tolerations, as the Karpenter NodePools);
- a `Cohort` tree: `robolake` at the root, one `team-<team>` cohort per team under it,
  so quota a team does not use is lent to the others;
- a `ClusterQueue` `<team>-<pool>` per team and pool with the team's nominal quota
  (`TEAMS`, in steps of that pool's size) and a borrowing limit of the same again;
  preemption lets a higher priority (training) preempt lower (ETL, batch) work in its own
  queue, reclaim lent quota, and, when borrowing, preempt other teams' ETL and batch;
- a `LocalQueue` per team namespace and pool, named after the pool's label (the
  `kueue.x-k8s.io/queue-name` the step Jobs carry);
- a `WorkloadPriorityClass` per Dagster run queue (interactive > training > etl > batch).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import yaml

from robolake_resources import pools

KUEUE_API = "kueue.x-k8s.io/v1beta2"
KUEUE_VERSION = "v0.19.2"  # the CRDs in deploy/kueue/crds/ come from this release
ROOT_COHORT = "robolake"
# team -> steps of each pool it is guaranteed at once (nominal quota = steps x the pool's
# requests); a team may borrow as much again from idle quota of the others
TEAMS: dict[str, dict[str, int]] = {
    "platform": {"cpu_spot": 32, "cpu_on_demand": 8, "gpu_standard": 1, "gpu_high": 0},
    "perception": {"cpu_spot": 16, "cpu_on_demand": 4, "gpu_standard": 4, "gpu_high": 1},
    "manipulation": {"cpu_spot": 8, "cpu_on_demand": 4, "gpu_standard": 3, "gpu_high": 1},
}


def pool_resources(pool: pools.Pool) -> dict[str, str]:
    """What one step of the pool requests (the Job's container requests)."""
    return {**pool.requests, **({"nvidia.com/gpu": str(pool.gpus)} if pool.gpus else {})}


def _times(quantity: str, n: int) -> str:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()
    return f"{int(number) * n}{unit}"


def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "robolake"}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def resource_flavor(pool: pools.Pool) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeLabels": dict(pool.node_selector)}
    if pool.tolerations:
        spec["tolerations"] = [dict(t) for t in pool.tolerations]
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": _meta(pool.label),
            "spec": spec}


def cluster_queue_name(team: str, pool: pools.Pool) -> str:
    return f"{team}-{pool.label}"


def cluster_queue(team: str, pool: pools.Pool, steps: int) -> dict[str, Any]:
    per_step = pool_resources(pool)
    resources = [{"name": name, "nominalQuota": _times(q, steps),
                  "borrowingLimit": _times(q, max(steps, 1))} for name, q in per_step.items()]
    return {"apiVersion": KUEUE_API, "kind": "ClusterQueue",
            "metadata": _meta(cluster_queue_name(team, pool)),
            "spec": {
                "cohortName": pools.team_namespace(team),
                "namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": pools.team_namespace(team)}},
                "queueingStrategy": "BestEffortFIFO",
                "resourceGroups": [{"coveredResources": list(per_step),
                                    "flavors": [{"name": pool.label, "resources": resources}]}],
                "preemption": {
                    "withinClusterQueue": "LowerPriority",
                    "reclaimWithinCohort": "Any",
                    "borrowWithinCohort": {"policy": "LowerPriority",
                                           "maxPriorityThreshold": pools.priority_value("etl")}},
            }}


def namespace_manifest(team: str) -> dict[str, Any]:
    """A team's namespace (also in deploy/teams/rbac.yaml, with its service account)."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": pools.team_namespace(team),
        "labels": {pools.TEAM_LABEL: team, "app.kubernetes.io/part-of": "robolake"}}}


def manifests(teams: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """Every Kueue object (and the team namespaces), in apply order."""
    teams = TEAMS if teams is None else teams
    docs: list[dict[str, Any]] = [resource_flavor(p) for p in pools.POOLS.values()]
    docs += [{"apiVersion": KUEUE_API, "kind": "WorkloadPriorityClass",
              "metadata": _meta(pools.priority_class(q)), "value": pools.priority_value(q),
              "description": f"Dagster run queue '{q}' (robolake/queue)"}
             for q in pools.QUEUES]
    docs.append({"apiVersion": KUEUE_API, "kind": "Cohort", "metadata": _meta(ROOT_COHORT),
                 "spec": {}})
    for team, quota in teams.items():
        namespace = pools.team_namespace(team)
        docs.append(namespace_manifest(team))
        docs.append({"apiVersion": KUEUE_API, "kind": "Cohort", "metadata": _meta(namespace),
                     "spec": {"parentName": ROOT_COHORT}})
        for pool in pools.POOLS.values():
            docs.append(cluster_queue(team, pool, quota.get(pool.name, 0)))
            docs.append({"apiVersion": KUEUE_API, "kind": "LocalQueue",
                         "metadata": _meta(pool.label, namespace),
                         "spec": {"clusterQueue": cluster_queue_name(team, pool)}})
    return docs


HEADER = """\
# Generated by `python -m robolake_resources.kueue` from resources/kueue.py and
# resources/pools.py: do not edit by hand (tests/test_kueue.py checks it is current).
# Kueue {version} (CRDs in deploy/kueue/crds/). Apply after installing Kueue:
#   kubectl apply --server-side -f deploy/kueue/queues.yaml
"""


def render(teams: dict[str, dict[str, int]] | None = None) -> str:
    body = yaml.safe_dump_all(manifests(teams), sort_keys=False, default_flow_style=False)
    return HEADER.format(version=KUEUE_VERSION) + "---\n" + body


if __name__ == "__main__":
    sys.stdout.write(render())
