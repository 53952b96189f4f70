"""A synthetic dataset version with a known, learnable signal (tests, benchmarks).

It is written exactly as a built version is (robolake.datasets.shards: WebDataset
shards plus manifest), so training reads it through the real loader. The signal:

- scenario labels: each class leaves its own trace in the (z-scored) IMU window:
  hard braking a negative ax step, sharp turns a large |gz|, GPS loss a flat GPS
  trajectory, sensor faults a dead IMU channel, rare robot types an ay
  oscillation; nominal frames are noise. LiDAR points cluster in a sector that
  depends on the class.
- ego_motion labels: (speed, yaw rate) drawn per sample; the GPS trajectory
  moves at that speed, gz measures the yaw rate and ay their product.

Non-nominal frames are corner cases (score 0.5-1), nominal ones are not (0-0.3).
"""

from __future__ import annotations

import json

import numpy as np

from robolake.datasets.shards import dataset_prefix, manifest_key, write_split
from robolake.datasets.spec import parse_spec
from robolake.models.architectures import SCENARIO_CLASSES
from robolake.storage import Store

# share of each class among the samples (nominal dominates, as on a real fleet)
CLASS_WEIGHTS = (0.4, 0.12, 0.12, 0.12, 0.12, 0.12)


def synthetic_spec(name: str, version: str, kind: str, features: tuple[str, ...] = ("imu", "gps"),
                   imu_window: int = 20, gps_history: int = 10, bev_cells: int = 16) -> dict:
    feats: dict = {}
    if "imu" in features:
        feats["imu_window"] = {"size": imu_window, "stride": 1}
    if "gps" in features:
        feats["gps_trajectory"] = {"history": gps_history}
    if "lidar" in features:
        feats["lidar"] = {"voxel_size_m": 0.2, "range_crop_m": 20.0, "bev_cells": bev_cells}
    data = {
        "name": name, "version": version, "description": "synthetic (robolake.models.synthetic)",
        "sources": {"dates": {"start": "2026-01-01", "end": "2026-12-31"}},
        "features": feats, "labels": {"kind": kind},
        "output": {"splits": {"train": 0.8, "val": 0.1, "test": 0.1}},
    }
    if "gps" in features or kind == "ego_motion":  # GPS columns: restricted
        data.update(privacy="approved", approval={
            "by": "robolake.models.synthetic", "when": "2026-12-01",
            "reason": "synthetic samples: no person and no place is recorded"})
    spec = parse_spec(data, f"<synthetic {name}>")
    return spec


def _sample(rng: np.random.Generator, kind: str, cls: int, features: tuple[str, ...],
            window: int, history: int) -> tuple[dict, np.ndarray]:
    imu = rng.normal(0.0, 1.0, (window, 6)).astype(np.float32)
    speed = float(rng.uniform(0.2, 3.0))
    yaw = float(rng.uniform(-0.6, 0.6))
    t = np.arange(history, 0, -1, dtype=np.float32) * 0.1  # seconds before the frame
    heading = -yaw * t
    gps = np.stack([-speed * t * np.cos(heading), -speed * t * np.sin(heading),
                    np.zeros_like(t)], axis=1).astype(np.float32)
    gps += rng.normal(0.0, 0.05, gps.shape).astype(np.float32)
    if kind == "ego_motion":
        imu[:, 5] += 3.0 * yaw  # gz (z-scored)
        imu[:, 1] += speed * yaw  # ay = v * w
        label = np.array([speed, yaw], dtype=np.float32)
    else:
        label = np.array(cls, dtype=np.int64)
    name = SCENARIO_CLASSES[cls]
    if name == "hard_braking":
        imu[window // 2:, 0] -= 2.5
    elif name == "sharp_turn":
        imu[:, 5] += 2.5 * rng.choice([-1.0, 1.0])
    elif name == "gps_loss":
        gps[:] = 0.0
        imu[:, 2] += 1.5  # the IMU also tells it apart without GPS
    elif name == "sensor_fault":
        imu[:, 3] = 0.0
        imu[:, 4] = 0.0
    elif name == "rare_robot_type":
        imu[:, 1] += 2.0 * np.sin(np.linspace(0, 4 * np.pi, window, dtype=np.float32))
    sample: dict = {"label": label}
    if "imu" in features:
        sample["imu"] = imu
    if "gps" in features:
        sample["gps"] = gps
    if "lidar" in features:
        n = 200
        angle = rng.uniform(-np.pi, np.pi, n)
        angle[: n // 2] = 2 * np.pi * cls / len(SCENARIO_CLASSES) + rng.normal(0, 0.2, n // 2)
        radius = rng.uniform(2.0, 18.0, n)
        points = np.stack([radius * np.cos(angle), radius * np.sin(angle),
                           rng.normal(0, 0.5, n)], axis=1)
        sample["lidar"] = points.astype(np.float16)
    return sample, label


def write_synthetic_dataset(lake: Store, name: str = "synthetic", version: str = "1.0.0", *,
                            kind: str = "scenario", samples: dict[str, int] | None = None,
                            features: tuple[str, ...] = ("imu", "gps"), seed: int = 0,
                            imu_window: int = 20, gps_history: int = 10, bev_cells: int = 16,
                            shard_size_bytes: int = 1 << 20) -> dict:
    """Write a dataset version (shards + manifest) into `lake`; returns the manifest."""
    samples = samples or {"train": 480, "val": 96, "test": 192}
    spec = synthetic_spec(name, version, kind, features, imu_window, gps_history, bev_cells)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in samples.items():
        classes = rng.choice(len(SCENARIO_CLASSES), size=n, p=CLASS_WEIGHTS)

        def gen(split=split, classes=classes):
            for i, cls in enumerate(classes):
                sample, _ = _sample(rng, kind, int(cls), features, imu_window, gps_history)
                nominal = cls == 0
                score = float(rng.uniform(0.0, 0.3) if nominal else rng.uniform(0.5, 1.0))
                sample["meta"] = {
                    "upload_id": f"synthetic-{split}-{i // 50:04d}", "robot_id": f"r{i % 4}",
                    "robot_type": "quadruped" if SCENARIO_CLASSES[cls] == "rare_robot_type"
                    else "delivery", "region": "eu-west", "date": "2026-01-01",
                    "ts_ns": 1_767_225_600_000_000_000 + i * 100_000_000,
                    "scenario": SCENARIO_CLASSES[cls], "corner_case_score": score,
                    "group": "delivery", "split": split}
                yield f"{split}-{i:06d}", sample

        shards = write_split(lake, f"{dataset_prefix(name, version)}/{split}", gen(),
                             shard_size_bytes)
        splits[split] = {"samples": int(n), "shards": shards}
    manifest = {"name": name, "version": version, "spec_hash": spec.spec_hash,
                "spec": spec.model_dump(mode="json"), "splits": splits,
                "stats": {"synthetic": True, "seed": seed}}
    lake.write_bytes(manifest_key(name, version), json.dumps(manifest, indent=2).encode())
    return manifest


def small_config(name: str, dataset: str = "synthetic", version: str = "1.0.0", **sections):
    """A quick training config for tests and benchmarks; `sections` override top-level keys
    (dicts are merged one level deep)."""
    from robolake.models.config import parse_config

    data: dict = {
        "name": name,
        "dataset": {"name": dataset, "version": version},
        "model": {"architecture": "imu_gps_convnet", "params": {"hidden": 24}},
        "training": {"seed": 3, "epochs": 4, "batch_size": 32, "cpu_threads": 1,
                     "optimizer": {"name": "adamw", "lr": 0.01},
                     "lr_schedule": {"name": "cosine", "warmup_steps": 5}},
        "checkpoint": {"every_steps": 50, "every_minutes": 60, "keep": 2},
        "early_stopping": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data, f"<test config {name}>")
