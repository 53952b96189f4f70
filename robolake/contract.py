"""The data contract's rules and thresholds, defined once (see DESIGN.md).

Every layer imports these names; asset descriptions and check metadata are
built from them, so a changed threshold changes what the UI says too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is not imported here: decode workers start without it (0.2 s)
    import polars as pl

# --------------------------------------------------------------------------- upload status

ACCEPTED, FLAGGED, QUARANTINED, DUPLICATE = "accepted", "flagged", "quarantined", "duplicate"
STATUSES = (ACCEPTED, FLAGGED, QUARANTINED, DUPLICATE)
USABLE_STATUSES = (ACCEPTED, FLAGGED)  # what later layers read
ACCEPT_ABOVE = 90.0  # quality score > 90: accepted
QUARANTINE_BELOW = 60.0  # score < 60: quarantined; in between: accepted and flagged
MAX_QUARANTINE_RATE = 0.2  # a partition quarantining more than this is worth a look (warn)

# --------------------------------------------------------------------------- cleaning rules

IMU_OUTLIER_NORM = 20.0  # m/s², acceleration norm above this is an outlier
LIDAR_MAX_RANGE_M = 200.0  # LiDAR returns beyond this are dropped
CAMERA_MATCH_NS = 16_000_000  # nearest camera frame counts only if |dt| < 16 ms
IMU_HALF_WINDOW_NS = 50_000_000  # IMU mean over [t - 50 ms, t + 50 ms)

# --------------------------------------------------------------------------- quality thresholds

MAX_NULL_RATE = 0.05
MAX_OUTLIER_RATE = 0.01
MAX_GAP_S = 1.0
MAX_GAP_NS = int(MAX_GAP_S * 1e9)
MAX_DUPLICATE_RATE = 0.001
MAX_LATENCY_S = 2 * 3600.0  # from arrival in the landing zone to rows in cleaned/

# --------------------------------------------------------------------------- features

CORNER_CASE_THRESHOLD = 0.5  # a frame at or above this corner-case score is a corner case


def primary_topic_rows(frame: pl.DataFrame, topic: str = "topic",
                       per: Sequence[str] = ()) -> pl.DataFrame:
    """The rows of the primary topic (the one with the most rows, ties by name) of each
    group `per` (the whole frame when empty): it stands for its sensor kind."""
    if frame.is_empty():
        return frame
    keys = [*per, topic]
    main = (frame.group_by(keys).len()
            .sort([*per, "len", topic], descending=[False] * len(per) + [True, False]))
    main = main.unique(list(per), keep="first", maintain_order=True) if per else main.head(1)
    return frame.join(main.select(keys), on=keys, how="semi", maintain_order="left")
