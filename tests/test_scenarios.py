"""Corner-case scores on hand-made aligned frames: each ramp and the scenario name."""

from __future__ import annotations

import polars as pl
import pytest

from robolake.datasets.scenarios import SCENARIOS, score_frames


def _frame(**overrides) -> dict:
    row = {"robot_type": "delivery", "imu_ax": 0.0, "imu_gz": 0.0, "imu_count": 10,
           "gps_lat": 53.0, "camera_ts_ns": 1}
    row.update(overrides)
    return row


def test_scores_and_scenarios():
    frames = pl.DataFrame([
        _frame(),                                    # nominal
        _frame(imu_ax=-4.0),                         # braking halfway up the ramp
        _frame(imu_ax=-9.0),                         # hard braking, saturated
        _frame(imu_gz=-0.65),                        # turning, half
        _frame(gps_lat=None),                        # no GPS
        _frame(camera_ts_ns=None),                   # camera missing
        _frame(imu_count=0, imu_ax=None, imu_gz=None),  # IMU missing
        _frame(robot_type="quadruped"),              # 1 of 8 frames: rare type
    ])
    out = score_frames(frames)
    assert out["score_hard_braking"].to_list() == [0, 0.5, 1, 0, 0, 0, 0, 0]
    assert out["score_sharp_turn"].to_list() == pytest.approx([0, 0, 0, 0.5, 0, 0, 0, 0])
    assert out["score_gps_loss"].to_list() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert out["score_sensor_fault"].to_list() == [0, 0, 0, 0, 0, 1, 1, 0]
    assert out["score_rare_robot_type"].to_list() == [0] * 7 + [pytest.approx(1 - 1 / 7)]
    assert out["scenario"].to_list() == [
        "nominal", "hard_braking", "hard_braking", "sharp_turn", "gps_loss", "sensor_fault",
        "sensor_fault", "rare_robot_type"]
    assert out["corner_case_score"].to_list() == pytest.approx(
        [0, 0.5, 1, 0.5, 1, 1, 1, 1 - 1 / 7])
    assert set(SCENARIOS) == {c.removeprefix("score_") for c in out.columns
                              if c.startswith("score_")}
