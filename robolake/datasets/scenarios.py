"""Scenario and corner-case mining on aligned frames.

Each aligned frame gets a score in [0, 1] per scenario and a corner-case score
(the largest of them), usable in dataset filters (`min_corner_case_score`) and
balancing (`corner_case_multiplier`). The scores are plain ramps on the
contract's columns, so a person can tell why a frame scored what it did.
"""

from __future__ import annotations

import polars as pl

# (start, full) of each ramp: below start scores 0, at full and beyond 1
HARD_BRAKING_MPS2 = (2.0, 6.0)  # deceleration, -imu_ax
SHARP_TURN_RADPS = (0.3, 1.0)  # |imu_gz|
SCENARIOS = ("hard_braking", "sharp_turn", "gps_loss", "sensor_fault", "rare_robot_type")


def _ramp(expr: pl.Expr, start: float, full: float) -> pl.Expr:
    return ((expr - start) / (full - start)).clip(0.0, 1.0).fill_null(0.0)


def score_frames(aligned: pl.DataFrame) -> pl.DataFrame:
    """Add `score_<scenario>` columns, `corner_case_score` and `scenario` (the top one,
    or "nominal" when every score is 0) to frames with the aligned_frames columns."""
    counts = aligned.group_by("robot_type").len()
    top = counts["len"].max() if counts.height else 0
    rarity = counts.with_columns(
        (1.0 - pl.col("len") / top).alias("score_rare_robot_type")).drop("len")
    scored = aligned.join(rarity, on="robot_type", how="left").with_columns(
        _ramp(-pl.col("imu_ax"), *HARD_BRAKING_MPS2).alias("score_hard_braking"),
        _ramp(pl.col("imu_gz").abs(), *SHARP_TURN_RADPS).alias("score_sharp_turn"),
        pl.col("gps_lat").is_null().cast(pl.Float64).alias("score_gps_loss"),
        (pl.col("camera_ts_ns").is_null() | (pl.col("imu_count") == 0))
        .cast(pl.Float64).alias("score_sensor_fault"),
    )
    score_cols = [f"score_{s}" for s in SCENARIOS]
    best = pl.max_horizontal(score_cols)
    # the first scenario (in SCENARIOS order) that reaches the best score names the frame
    name = pl.when(best <= 0).then(pl.lit("nominal"))
    for s in SCENARIOS:
        name = name.when(pl.col(f"score_{s}") == best).then(pl.lit(s))
    return scored.with_columns(best.alias("corner_case_score"), name.alias("scenario"))
