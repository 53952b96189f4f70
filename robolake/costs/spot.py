"""Spot fallback: an ETL step that lost its Spot capacity twice runs its next attempt on
the on-demand CPU pool.

"Lost Spot capacity", concretely, is an attempt of the step that ended in one of:

- `CapacityLost` anywhere in the attempt's error chain: on Kubernetes a step's process
  that gets SIGTERM (its pod is being deleted: the Spot reclaim's two-minute notice, a node
  drain) raises it through `retry_only_transient` (robolake_resources.pools), and the
  pool's retry policy retries it, like any failure `is_transient` calls capacity;
- a failed health check whose reason carries `CAPACITY_LOST`: the step's pod died without
  reporting and Kubernetes says why (`pod_disruption`: the pod's DisruptionTarget
  condition, or a node shutdown / lost node), as the Kueue step handler reports it.

Anything else (bad data, a bug, an OOM kill, a network error) is not a capacity loss.
Losses are counted per step over the attempts of the run and of the runs it was
re-executed from (run_retries), so a run retry does not start the count again. Pure functions:
the Dagster wiring is robolake_resources.spot.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FALLBACK_AFTER = 2  # capacity losses of a step before its next attempt leaves Spot
FALLBACK_POOLS = {"cpu_spot": "cpu_on_demand"}  # Spot pool -> where its steps fall back to
CAPACITY_LOST = "capacity lost"
CAPACITY_ERRORS = {"CapacityLost"}

# Pod conditions / reasons Kubernetes gives a pod it killed for capacity, not for the pod's
# own fault: DisruptionTarget (1.26+: eviction, preemption, taint manager, node shutdown),
# and the reasons of pods on a node that shut down or disappeared.
_DISRUPTION_REASONS = {"Terminated", "Shutdown", "NodeShutdown", "NodeLost", "Evicted"}

ErrorChain = Sequence[tuple[str | None, str]]  # (exception class name, message), outer first


def is_capacity_loss(chain: ErrorChain) -> bool:
    """Whether one failed attempt (its error and causes) lost its capacity."""
    for cls_name, message in chain:
        if cls_name in CAPACITY_ERRORS or CAPACITY_LOST in (message or ""):
            return True
    return False


def count_capacity_losses(attempts: Iterable[ErrorChain]) -> int:
    return sum(1 for chain in attempts if is_capacity_loss(chain))


def fallback_pool(pool: str | None, losses: int) -> str | None:
    """The pool the step's next attempt runs in instead of `pool`, or None: stay."""
    if pool in FALLBACK_POOLS and losses >= FALLBACK_AFTER:
        return FALLBACK_POOLS[pool]
    return None


def pod_disruption(pod: dict) -> str | None:
    """Why Kubernetes took a (failed) step pod away for capacity, from the pod as the API
    returns it (camelCase JSON); None when it failed on its own (exit code, OOM kill)."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "DisruptionTarget" and condition.get("status") == "True":
            why = condition.get("reason") or "DisruptionTarget"
            return f"{why}: {condition.get('message') or 'pod disrupted'}"
    if status.get("reason") in _DISRUPTION_REASONS:
        return f"{status['reason']}: {status.get('message') or 'node went away'}"
    return None
