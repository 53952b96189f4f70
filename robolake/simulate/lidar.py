"""The LiDAR: a spinning multi-ring scanner ray-cast against the static world."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from robolake.simulate.motion import Trajectory
from robolake.simulate.world import World

if TYPE_CHECKING:
    from robolake.simulate.draft import Draft
    from robolake.simulate.ros import Codec

LIDAR_MAX_CLEAN_RANGE_M = 100.0  # every return of an undamaged frame is nearer
_LIDAR_REACH_M = 61.0  # nothing beyond the facade (<= 60.5 m) can be seen
_LIDAR_RING_ELEVATIONS_DEG = (-12.0, -8.0, -5.0, -3.0, -1.5, 0.0, 2.0, 4.0)


class Lidar:
    """A spinning multi-ring LiDAR. Obstacles are 2.5-D (tall), so the horizontal
    range depends on azimuth only: it is ray-cast once per column, shared by the rings."""

    def __init__(self, world: World, traj: Trajectory, n_points: int, height_m: float,
                 rng: np.random.Generator):
        self.world, self.traj, self.rng, self.h = world, traj, rng, height_m
        n_rings = min(len(_LIDAR_RING_ELEVATIONS_DEG), max(1, n_points))
        j = np.arange(n_points)
        self.n_cols = int(math.ceil(n_points / n_rings))
        self.col = j // n_rings
        self.elev = np.radians(np.asarray(_LIDAR_RING_ELEVATIONS_DEG[:n_rings]))[j % n_rings]
        self.col_az0 = 2 * math.pi * np.arange(self.n_cols) / self.n_cols - math.pi
        down = self.elev < 0
        self.ground_range = np.full(n_points, np.inf)
        self.ground_range[down] = self.h / np.tan(-self.elev[down])
        self.tan_elev = np.tan(self.elev)

    def frame(self, t: float, k: int) -> np.ndarray:
        """(N, 4) float32 x, y, z, intensity in the sensor frame (x forward, z up)."""
        w = self.world
        ox, oy = (float(v[0]) for v in self.traj.position(np.array([t])))
        psi = float(self.traj.heading(np.array([t]))[0])
        col_az = self.col_az0 + (k * 0.613) % 1.0 * (2 * math.pi / self.n_cols)  # spin jitter
        theta = psi + col_az
        dx, dy = np.cos(theta), np.sin(theta)
        col_range = w.facade_range(theta)
        col_refl = np.full(self.n_cols, 8.0)
        # pillars within reach
        rel = w.pillars - (ox, oy)
        near = (rel ** 2).sum(1) < (_LIDAR_REACH_M + w.radii) ** 2
        if near.any():
            rel, r = rel[near], w.radii[near]
            proj = dx[:, None] * rel[:, 0] + dy[:, None] * rel[:, 1]
            disc = r ** 2 - ((rel ** 2).sum(1) - proj ** 2)
            tt = proj - np.sqrt(np.maximum(disc, 0.0))
            tt = np.where((disc > 0) & (tt > 0.05), tt, np.inf).min(1)
            hit = tt < col_range
            col_range, col_refl = np.where(hit, tt, col_range), np.where(hit, 60.0, col_refl)
        # walls within reach
        near = ((w.wall_mid - (ox, oy)) ** 2).sum(1) < (_LIDAR_REACH_M + w.wall_half) ** 2
        if near.any():
            a, e = w.wall_a[near], w.wall_e[near]
            wx, wy = a[:, 0] - ox, a[:, 1] - oy
            denom = dx[:, None] * e[:, 1] - dy[:, None] * e[:, 0]
            safe = np.where(np.abs(denom) > 1e-9, denom, 1.0)
            tt = (wx * e[:, 1] - wy * e[:, 0]) / safe
            s = (wx * dy[:, None] - wy * dx[:, None]) / safe
            ok = (np.abs(denom) > 1e-9) & (tt > 0.05) & (s >= 0.0) & (s <= 1.0)
            tt = np.where(ok, tt, np.inf).min(1)
            hit = tt < col_range
            col_range, col_refl = np.where(hit, tt, col_range), np.where(hit, 35.0, col_refl)
        # per beam: the column's obstacle, unless a downward ring meets the ground first
        rng_h, refl = col_range[self.col], col_refl[self.col]
        ground = self.ground_range < rng_h
        rng_h = np.where(ground, self.ground_range, rng_h)
        refl = np.where(ground, 12.0, refl)
        az = col_az[self.col]
        z = np.where(ground, -self.h, rng_h * self.tan_elev)
        pts = np.stack([rng_h * np.cos(az), rng_h * np.sin(az), z], axis=1)
        r3 = np.sqrt((pts ** 2).sum(1))
        noise = self.rng.normal(0.0, 1.0, (2, len(r3)))
        pts *= ((r3 + 0.02 * noise[0]) / r3)[:, None]
        intensity = np.clip(refl * (1.0 - r3 / 150.0) + 2.0 * noise[1], 0, 255)
        return np.concatenate([pts, intensity[:, None]], axis=1).astype(np.float32)


class LidarSource:
    """The recording's point clouds, made frame by frame while writing; a fault may push
    some returns of a frame far out (`far`: frame -> (point indices, ranges))."""

    def __init__(self, rec: Draft):
        world = World(rec.rngs["world"], rec.traj, rec.duration_s)
        self.lidar = Lidar(world, rec.traj, rec.lidar_points, rec.profile.lidar_height_m,
                           rec.rngs["lidar"])
        self.t = rec.rel_t["lidar"]
        self.far: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def messages(self, codec: Codec, frame_id: str) -> Callable[[int, int], Any]:
        t = self.t.tolist()

        def message(i: int, stamp: int) -> Any:
            pts = self.lidar.frame(t[i], i)
            if i in self.far:
                idx, ranges = self.far[i]
                norms = np.linalg.norm(pts[idx, :3].astype(np.float64), axis=1)
                pts[idx, :3] = (pts[idx, :3] * (ranges / norms)[:, None]).astype(np.float32)
            return codec.pointcloud(codec.header(stamp, frame_id, i), pts)

        return message
