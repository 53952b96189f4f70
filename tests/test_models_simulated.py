"""End to end on simulator data: recordings -> raw -> cleaned -> dataset -> a model that
beats chance clearly (the ego-motion signal is in the simulated IMU and GPS)."""

from __future__ import annotations

from pathlib import Path

import yaml

from robolake.cleaned import clean_partition
from robolake.datasets.build import build_dataset
from robolake.datasets.spec import parse_spec
from robolake.models.config import parse_config
from robolake.models.evaluate import evaluate_model
from robolake.models.train import train
from robolake.raw import ingest_landing
from robolake.simulate import simulate_fleet
from robolake.storage import open_store

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-20"


def test_ego_motion_model_learns_from_simulated_recordings(tmp_path: Path):
    simulate_fleet(tmp_path / "landing", robots=5, date=DAY, minutes=1.0, seed=11)
    lake = open_store(tmp_path / "lake")
    ingest_landing(open_store(tmp_path / "landing"), lake)
    for robot_type in ("delivery", "warehouse_amr"):
        clean_partition(lake, DAY, robot_type)
    spec = yaml.safe_load((REPO / "specs" / "ego_motion_demo.yaml").read_text())
    spec["sources"]["dates"] = {"start": DAY, "end": DAY}
    built = build_dataset(lake, parse_spec(spec))
    assert built.samples["train"] > 300 and built.samples["test"] > 50

    config = yaml.safe_load((REPO / "configs" / "training" / "imu_gps_demo.yaml").read_text())
    config["training"].update(epochs=20, max_steps=800)
    config = parse_config(config)
    result = train(config, lake, track=False, log=lambda _msg: None)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] / 3, losses

    report = evaluate_model(result.model, lake, config, measure=False)
    assert report.samples == built.samples["test"]
    # chance: predicting the test split's mean speed and yaw rate
    assert report.metrics["mae"] < 0.35 * report.metrics["naive_mae"], report.metrics
    # in physical terms (the robots drive at about 0.4-2 m/s and turn at up to 0.5 rad/s)
    assert report.metrics["mae_speed"] < 0.15 and report.metrics["mae_yaw_rate"] < 0.1
