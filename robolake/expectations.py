"""Great Expectations (GX 1.x) suites for the cleaned tables.

GX validates pandas frames here (it does not take polars); the suites state
the data contract in a form other teams' tooling can read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

import polars as pl


@dataclass
class SuiteResult:
    suite: str
    success: bool
    evaluated: int
    failed: list[str]  # "expectation(column): observed" for each failed expectation


def _suites():
    import great_expectations as gx

    e = gx.expectations
    return {
        "cleaned_imu": [
            e.ExpectColumnValuesToNotBeNull(column="ts_ns"),
            e.ExpectCompoundColumnsToBeUnique(column_list=["robot_id", "topic", "ts_ns"]),
            *[e.ExpectColumnValuesToBeBetween(column=c, min_value=-20.0, max_value=20.0)
              for c in ("ax", "ay", "az")],
        ],
        "cleaned_gps": [
            e.ExpectColumnValuesToNotBeNull(column="ts_ns"),
            e.ExpectColumnValuesToBeBetween(column="lat", min_value=-90.0, max_value=90.0),
            e.ExpectColumnValuesToBeBetween(column="lon", min_value=-180.0, max_value=180.0),
            e.ExpectColumnValuesToBeBetween(column="status", min_value=0),
        ],
        "cleaned_lidar": [
            e.ExpectColumnValuesToNotBeNull(column="payload_ref"),
            e.ExpectColumnPairValuesAToBeGreaterThanB(column_A="points_total",
                                                      column_B="points_kept", or_equal=True),
            e.ExpectColumnValuesToBeBetween(column="range_max_m", max_value=200.0),
        ],
        "cleaned_camera_frames": [
            e.ExpectColumnValuesToNotBeNull(column="payload_ref"),
            e.ExpectColumnValuesToBeBetween(column="brightness", min_value=0.0, max_value=255.0),
        ],
        "cleaned_aligned_frames": [
            e.ExpectColumnValuesToNotBeNull(column="ts_ns"),
            e.ExpectColumnValuesToBeBetween(column="camera_dt_ms", min_value=-16.0,
                                            max_value=16.0, strict_min=True, strict_max=True),
            e.ExpectColumnValuesToBeBetween(column="imu_count", min_value=0),
            e.ExpectColumnValuesToBeBetween(column="gps_lat", min_value=-90.0, max_value=90.0),
            e.ExpectColumnValuesToBeBetween(column="lidar_points", min_value=0),
        ],
    }


SUITES = ("cleaned_imu", "cleaned_gps", "cleaned_lidar", "cleaned_camera_frames",
          "cleaned_aligned_frames")


@cache
def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no phoning home from a pipeline
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("robolake")
    batches, suites = {}, {}
    for name, expectations in _suites().items():
        asset = source.add_dataframe_asset(name=name)
        batches[name] = asset.add_batch_definition_whole_dataframe(f"{name}_batch")
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        suites[name] = suite
    return batches, suites


def validate(name: str, frame: pl.DataFrame) -> SuiteResult:
    """Run the suite `name` on a frame; an empty frame passes (nothing to contradict)."""
    batches, suites = _context()
    if frame.is_empty():
        return SuiteResult(name, True, 0, [])
    batch = batches[name].get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    result = batch.validate(suites[name])
    failed = []
    for r in result.results:
        if not r.success:
            cfg = r.expectation_config
            column = cfg.kwargs.get("column") or cfg.kwargs.get("column_list") or ""
            observed = (r.result or {}).get("unexpected_count", (r.result or {}).get(
                "observed_value"))
            failed.append(f"{cfg.type}({column}): {observed} unexpected")
    return SuiteResult(name, bool(result.success), len(result.results), failed)
