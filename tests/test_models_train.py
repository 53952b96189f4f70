"""Training: the model learns, kill-and-resume is exact, torchrun DDP ranks agree.

Data: synthetic dataset versions with a learnable signal (robolake.models.synthetic),
written in the built-version format and read through the real loader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from robolake.datasets.loader import rank_stream_length
from robolake.models.evaluate import evaluate_model
from robolake.models.synthetic import small_config, write_synthetic_dataset
from robolake.models.train import CheckpointStore, checkpoint_prefix, train
from robolake.storage import open_store

REPO = Path(__file__).resolve().parents[1]
QUIET = lambda message: None  # noqa: E731


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("models") / "lake")
    write_synthetic_dataset(store, "scenes", kind="scenario", seed=1)
    return store


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), f"{name} differs"


def test_scenario_classifier_learns(lake):
    config = small_config("learner", "scenes", training={"epochs": 6})
    result = train(config, lake, track=False, log=QUIET)
    assert result.finished and result.global_step == 6 * (480 // 32)
    losses = [h["train_loss"] for h in result.history]
    assert losses[0] > 1.5 and losses[-1] < losses[0] / 2, losses
    assert result.history[-1]["val_accuracy"] > 0.7

    report = evaluate_model(result.model, lake, config, measure=False)
    assert report.samples == 192
    # chance: always predicting the majority class (nominal, ~40 %)
    assert report.metrics["accuracy"] > report.metrics["naive_accuracy"] + 0.3
    assert report.metrics["macro_f1"] > 0.7 > 0.2 > report.metrics["naive_macro_f1"]
    assert set(report.per_scenario) == {"nominal", "hard_braking", "sharp_turn", "gps_loss",
                                        "sensor_fault", "rare_robot_type"}
    assert sum(v["samples"] for v in report.per_scenario.values()) == 192
    # corner cases: every non-nominal synthetic frame (score >= 0.5)
    assert report.corner_cases["samples"] == 192 - report.per_scenario["nominal"]["samples"]


def test_ego_motion_regressor_learns(tmp_path):
    store = open_store(tmp_path / "lake")
    write_synthetic_dataset(store, "ego", kind="ego_motion", seed=2,
                            samples={"train": 480, "val": 64, "test": 128})
    config = small_config("ego", "ego", training={"epochs": 6})
    result = train(config, store, track=False, log=QUIET)
    assert result.io.task == "ego_motion" and result.io.outputs == 2
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] / 3, losses
    report = evaluate_model(result.model, store, config, measure=False)
    # chance: predicting the mean speed and yaw rate of the test split
    assert report.metrics["mae"] < 0.6 * report.metrics["naive_mae"], report.metrics
    assert report.metrics["mae_speed"] < 0.6 * report.metrics["naive_mae"]


def test_lidar_bev_classifier_learns(tmp_path):
    store = open_store(tmp_path / "lake")
    write_synthetic_dataset(store, "bev", kind="scenario", features=("lidar",), seed=3,
                            samples={"train": 320, "val": 64, "test": 128})
    config = small_config("bev", "bev", model={"architecture": "lidar_bev_cnn",
                                                 "params": {"channels": 8, "hidden": 32}},
                          training={"epochs": 5, "optimizer": {"name": "adamw", "lr": 0.01}})
    result = train(config, store, track=False, log=QUIET)
    assert result.io.inputs == ("lidar",)
    report = evaluate_model(result.model, store, config, measure=False)
    assert report.metrics["accuracy"] > report.metrics["naive_accuracy"] + 0.2, report.metrics


def _resumable_config(name: str, **training):
    # dropout, warmup + cosine, gradient clipping and early-stopping state: everything a
    # resume has to restore
    return small_config(
        name, "scenes",
        model={"architecture": "imu_gps_convnet", "params": {"hidden": 16, "dropout": 0.2}},
        training={"epochs": 3, "grad_clip_norm": 0.5, **training},
        checkpoint={"every_steps": 7, "every_minutes": 60, "keep": 2},
        early_stopping={"enabled": True, "patience": 10, "restore_best": True})


def _write_config(path: Path, config) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return path


def test_kill_and_resume_gives_the_same_weights(lake, tmp_path):
    config = _resumable_config("resume")
    steps = 3 * (480 // 32)
    whole = train(config, lake, run_key="whole", track=False, log=QUIET)
    assert whole.finished and whole.global_step == steps and whole.resumed_from is None

    # "killed" after step 25 (mid epoch 1): the newest checkpoint is step 21, so the
    # resumed run repeats steps 22-25 from the checkpointed RNG and loader position.
    # Two loader workers here, none in the uninterrupted run: the order is the same.
    with_workers = _resumable_config("resume", num_workers=2)
    killed = train(with_workers, lake, run_key="killed", stop_after_steps=25, track=False,
                   log=QUIET)
    assert not killed.finished and killed.global_step == 25
    ckpts = CheckpointStore(lake, checkpoint_prefix("resume", "killed"))
    pointer = ckpts.latest_pointer()
    assert (pointer["step"], pointer["epoch"], pointer["samples_in_epoch"]) == (21, 1, 6 * 32)
    assert [k.rsplit("/", 1)[-1] for k in ckpts.keys()] == ["step-00000015.pt",
                                                            "step-00000021.pt"]  # keep: 2
    state = ckpts.load(pointer)
    assert {"model", "optimizer", "scheduler", "rng", "position", "early_stopping"} <= set(state)
    assert state["scheduler"]["last_epoch"] == 21

    resumed = train(with_workers, lake, run_key="killed", track=False, log=QUIET)
    assert resumed.finished and resumed.resumed_from.endswith("step-00000021.pt")
    assert resumed.global_step == steps
    _assert_same_weights(whole.model, resumed.model)
    assert resumed.weights_sha256 == whole.weights_sha256
    assert resumed.history == whole.history
    assert ckpts.latest_pointer()["finished"] is True

    # a real kill: SIGKILL the training process once it has checkpointed, start it again
    path = _write_config(tmp_path / "resume.yaml", config)
    victim = CheckpointStore(lake, checkpoint_prefix("resume", "victim"))
    cmd = [sys.executable, "-m", "robolake.models.torchrun_entry", "--config", str(path),
           "--lake", lake.uri, "--run-key", "victim", "--no-mlflow",
           "--result-json", str(tmp_path / "result.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not victim.latest_pointer():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = victim.latest_pointer()
    assert not killed_at["finished"] and 7 <= killed_at["step"] < steps
    assert not (tmp_path / "result.json").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["finished"] and summary["resumed_from"] is not None
    assert summary["global_step"] == steps
    assert summary["weights_sha256"] == whole.weights_sha256


def test_torchrun_two_processes_train_and_agree(lake, tmp_path):
    from robolake.models.pipeline import launch_torchrun

    config = small_config("ddp", "scenes", training={"epochs": 3, "batch_size": 16},
                          distributed={"nproc_per_node": 2, "backend": "gloo"})
    path = _write_config(tmp_path / "ddp.yaml", config)
    lines: list[str] = []
    ranks = launch_torchrun(lake, path, 2, extra_args=["--no-mlflow"], log=lines.append,
                            timeout=300)
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    steps = 3 * (rank_stream_length(480, 1, 2) // 16)
    assert all(r["finished"] and r["global_step"] == steps for r in ranks)
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    history = ranks[0]["history"]
    assert history == ranks[1]["history"]  # losses and metrics are summed over both ranks
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert history[-1]["val_accuracy"] > 0.6
    assert ranks[0]["run_key"].endswith("-w2")
    assert any(line.startswith("epoch 2 ") for line in lines)  # rank 0 reports progress
