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
# class indices of scenario labels in datasets
SCENARIO_CLASSES = ("nominal", *SCENARIOS)


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


# --------------------------------------------------------------------------- the feature table

CORNER_CASES = "features/corner_cases"
SCORE_COLUMNS = [f"score_{s}" for s in SCENARIOS]


def stale_corner_case_partitions(lake) -> set[tuple[str, str]]:
    """(date, robot_type) partitions of the aligned frames whose corner-case scores are
    missing or were computed from an older aligned version (all of them when the scores
    table does not exist yet)."""
    from robolake.cleaned import TABLES
    from robolake.tables import open_table, read_table

    aligned_table = open_table(lake, TABLES["aligned"])
    if aligned_table is None:
        return set()
    aligned = pl.from_arrow(read_table(lake, TABLES["aligned"], columns=["date", "robot_type"]))
    wanted = set(aligned.unique().iter_rows())
    scores = read_table(lake, CORNER_CASES, columns=["date", "robot_type", "source_version"])
    if scores is None:
        return wanted
    current = (pl.from_arrow(scores)
               .filter(pl.col("source_version") == aligned_table.version())
               .select("date", "robot_type").unique())
    return wanted - set(current.iter_rows())


def refresh_corner_cases(lake) -> tuple[int, int]:
    """Score every aligned frame into `features/corner_cases` (one commit, whole table).

    Rarity is relative to the whole fleet, so the table is recomputed as a whole;
    it is cheap column arithmetic. Rows carry the aligned table's Delta version
    they were computed from (`source_version`), so a reader can tell whether the
    scores are current. Returns (source version, table version); a no-op when
    the scores are already current.
    """
    from robolake.cleaned import PARTITION_BY, TABLES
    from robolake.tables import open_table, overwrite_table, read_table

    aligned_table = open_table(lake, TABLES["aligned"])
    if aligned_table is None:
        raise FileNotFoundError(f"{TABLES['aligned']} does not exist yet: run the cleaned "
                                f"layer first (robolake ingest --through cleaned)")
    source = aligned_table.version()
    current = open_table(lake, CORNER_CASES)
    if current is not None:
        seen = read_table(lake, CORNER_CASES, columns=["source_version"])
        if seen.num_rows and pl.from_arrow(seen)["source_version"].min() == source:
            return source, current.version()
    aligned = pl.from_arrow(read_table(lake, TABLES["aligned"], version=source))
    scored = score_frames(aligned).with_columns(pl.lit(source, pl.Int64).alias("source_version"))
    return source, overwrite_table(lake, CORNER_CASES, scored.to_arrow(),
                                   partition_by=PARTITION_BY)
