"""One recording being made: what its sensors share, their data, and what faults changed."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robolake.simulate.faults import FAULT_KINDS
from robolake.simulate.motion import Trajectory
from robolake.simulate.robots import REGIONS, Profile, RobotIdentity, profile_of
from robolake.simulate.sensors import SENSORS, message_count


def _streams(seed: int, robot_id: str) -> dict[str, np.random.Generator]:
    # Fixed stream layout: adding a fault never changes the clean sensor data (and a new
    # stream goes last, so the existing ones stay what they are).
    names = ("motion", "world", "imu", "lidar", "camera", *FAULT_KINDS)
    root = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(robot_id.encode())])
    children = root.spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children, strict=True)}


@dataclass
class Draft:
    """The sensors read their inputs here and faults record what they did; the ground
    truth is read off it once the file is written."""

    path: Path
    fmt: str
    robot: RobotIdentity
    seed: int
    start_ns: int
    duration_s: float
    lidar_points: int
    image_size: tuple[int, int]
    rngs: dict[str, np.random.Generator]
    profile: Profile
    origin: tuple[float, float, float]
    traj: Trajectory
    counts: dict[str, int]  # messages per sensor (without duplicates)
    base_ns: dict[str, np.ndarray]  # nominal log times per sensor
    rel_t: dict[str, np.ndarray]  # the same in seconds since the start
    log_ns: dict[str, np.ndarray]  # log times as written (a fault may move them)
    sources: dict[str, Any] = field(default_factory=dict)  # sensor key -> its Source
    # per sensor, the messages a fault changed: duplicates avoid them, so each effect
    # counts once
    damaged: dict[str, np.ndarray] = field(default_factory=dict)
    duplicates: dict[str, set[int]] = field(default_factory=dict)  # written twice
    clock_offset_ns: int = 0  # header.stamp = log time + this
    write_identity: bool = True

    @classmethod
    def start(cls, path: Path, fmt: str, robot: RobotIdentity, seed: int, start_ns: int,
              duration_s: float, lidar_points: int, image_size: tuple[int, int]) -> Draft:
        rngs = _streams(seed, robot.robot_id)
        profile = profile_of(robot.robot_type)
        counts = {s.key: message_count(duration_s, s.rate_hz) for s in SENSORS}
        base_ns = {s.key: start_ns + np.arange(counts[s.key], dtype=np.int64) * s.period_ns
                   for s in SENSORS}
        rec = cls(
            path=path, fmt=fmt, robot=robot, seed=seed, start_ns=start_ns,
            duration_s=duration_s, lidar_points=lidar_points, image_size=image_size,
            rngs=rngs, profile=profile, origin=REGIONS[robot.region],
            traj=Trajectory(rngs["motion"], profile, duration_s), counts=counts,
            base_ns=base_ns, rel_t={k: (v - start_ns) / 1e9 for k, v in base_ns.items()},
            log_ns={k: v.copy() for k, v in base_ns.items()},
            damaged={s.key: np.zeros(0, dtype=np.int64) for s in SENSORS},
            duplicates={s.key: set() for s in SENSORS})
        rec.sources = {s.key: s.source(rec) for s in SENSORS}
        return rec

    def log_times(self, key: str, idx: Sequence[int] | np.ndarray) -> list[int]:
        return [int(self.log_ns[key][i]) for i in sorted(idx)]
