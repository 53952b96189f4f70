"""How far the cleaned layer is behind the landing zone (the freshness SLA).

The lag is the age of the oldest landing file that still waits for the cleaned layer: not
indexed yet, or indexed as usable without its quality report (quarantined files and
duplicates wait for nothing). An empty backlog is a lag of 0, however long the fleet has
been quiet. The SLA is `Settings.freshness_max_lag_s` (ROBOLAKE_FRESHNESS_MAX_LAG_S, 3600 s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from robolake import ingest_plan, raw
from robolake.storage import Store


@dataclass(frozen=True)
class Lag:
    seconds: float  # age of the oldest waiting file (0 when nothing waits)
    waiting: int  # landing files not in the cleaned layer yet
    oldest_key: str  # "" when nothing waits
    oldest_partition: str  # "2026-11-27|delivery", "" when nothing waits

    def breached(self, max_lag_s: float) -> bool:
        return self.seconds > max_lag_s


def cleaned_lag(landing: Store, lake: Store, now_ns: int | None = None) -> Lag:
    """The cleaned layer's lag behind the landing zone now (arrival = file change time)."""
    now_ns = now_ns or time.time_ns()
    files = raw.list_landing(landing)
    assignments = raw.assign_partitions(landing, lake, files, now_ns=now_ns)
    waiting = ingest_plan.undone(lake, assignments, "cleaned")
    if not waiting:
        return Lag(0.0, 0, "", "")
    oldest = min(waiting, key=lambda a: max(a.file.mtime_ns, a.file.sidecar_mtime_ns))
    arrived = max(oldest.file.mtime_ns, oldest.file.sidecar_mtime_ns)
    return Lag(max(0.0, (now_ns - arrived) / 1e9), len(waiting), oldest.file.key,
               "|".join(oldest.partition))
