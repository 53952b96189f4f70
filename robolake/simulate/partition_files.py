"""A cleaned-IMU-like partition written the way the cleaned layer writes it: robots upload
recordings of a few hours in any order, and each run commits the uploads that arrived
since the last one (several robots, scattered hours) as one small file. Used by the data
skipping benchmark and test (robolake.zorder)."""

from __future__ import annotations

import random

import numpy as np
import polars as pl

from robolake.storage import Store
from robolake.tables import Write, commit_keyed

HOUR_NS = 3_600_000_000_000
PARTITION_BY = ["date", "robot_type", "region"]
IMU_FLOATS = ("ax", "ay", "az", "gx", "gy", "gz", "qx", "qy", "qz", "qw")


def upload_frames(robots: int, hours: int, hz: float, upload_hours: int, day_ns: int,
                  date: str, seed: int = 0) -> list[pl.DataFrame]:
    """One frame per upload: robot r's hours [k*upload_hours, (k+1)*upload_hours)."""
    rng = np.random.default_rng(seed)
    step = int(1e9 / hz)
    frames = []
    for r in range(robots):
        for start_h in range(0, hours, upload_hours):
            lo = day_ns + start_h * HOUR_NS
            ts = np.arange(lo, lo + min(upload_hours, hours - start_h) * HOUR_NS, step,
                           dtype=np.int64) + int(rng.integers(0, step))
            robot = f"robot-{r:03d}"
            frames.append(pl.DataFrame({
                "robot_id": robot, "robot_type": "amr", "region": "eu-west", "date": date,
                "upload_id": f"{robot}-{start_h:02d}", "topic": "/imu", "ts_ns": ts,
                "log_ns": ts + 1_000_000,
                **{c: rng.normal(size=ts.size) for c in IMU_FLOATS}}))
    return frames


def write_runs(lake: Store, key: str, uploads: list[pl.DataFrame], per_run: int,
               seed: int = 0) -> int:
    """Commit the uploads in random arrival order, `per_run` per keyed commit (one small
    file each); returns the number of commits."""
    order = list(range(len(uploads)))
    random.Random(seed).shuffle(order)
    runs = [order[i:i + per_run] for i in range(0, len(order), per_run)]
    for run in runs:
        data = pl.concat([uploads[i] for i in run]).to_arrow()
        commit_keyed(lake, key, lambda _snap, data=data: Write(data), PARTITION_BY)
    return len(runs)
