"""The static world the LiDAR sees: pillars and walls around the path, a distant facade."""

from __future__ import annotations

import math

import numpy as np

from robolake.simulate.motion import Trajectory


class World:
    """A static 2.5-D world in ENU: round pillars, straight walls, flat ground, a far facade."""

    def __init__(self, rng: np.random.Generator, traj: Trajectory, duration_s: float):
        ts = np.arange(0.0, max(duration_s, 0.0) + 1.0, 1.0)
        px, py = traj.position(ts)
        path = np.stack([px, py], axis=1)
        length = float(np.sum(np.hypot(np.diff(px), np.diff(py))))
        # pillars (trees, posts) scattered around the path, never on it
        n_p = 30 + int(length / 2.5)
        base = path[rng.integers(0, len(path), n_p)]
        ang, dist = rng.uniform(0, 2 * math.pi, n_p), rng.uniform(3.0, 45.0, n_p)
        centers = base + np.stack([dist * np.cos(ang), dist * np.sin(ang)], axis=1)
        radii = rng.uniform(0.15, 1.2, n_p)
        keep = _min_dist_points(centers, path) > radii + 3.0
        self.pillars, self.radii = centers[keep], radii[keep]
        # walls (building fronts, shelves)
        n_w = 8 + int(length / 12.0)
        base = path[rng.integers(0, len(path), n_w)]
        ang, dist = rng.uniform(0, 2 * math.pi, n_w), rng.uniform(6.0, 50.0, n_w)
        mid = base + np.stack([dist * np.cos(ang), dist * np.sin(ang)], axis=1)
        orient, half = rng.uniform(0, math.pi, n_w), rng.uniform(3.0, 15.0, n_w)
        along = np.stack([np.cos(orient), np.sin(orient)], axis=1) * half[:, None]
        a, b = mid - along, mid + along
        keep = _min_dist_segments(a, b, path) > 3.0
        self.wall_a, self.wall_e = a[keep], (b - a)[keep]
        self.wall_mid, self.wall_half = mid[keep], half[keep]
        self.facade_phase = rng.uniform(0, 2 * math.pi, 2)

    def facade_range(self, world_angle: np.ndarray) -> np.ndarray:
        # distant surroundings, 49.5–60.5 m, a function of the world bearing
        p1, p2 = self.facade_phase
        return 55.0 + 4.0 * np.sin(3 * world_angle + p1) + 1.5 * np.sin(8 * world_angle + p2)


def _min_dist_points(points: np.ndarray, path: np.ndarray, block: int = 256) -> np.ndarray:
    out = np.empty(len(points))
    for i in range(0, len(points), block):
        d = points[i:i + block, None, :] - path[None, :, :]
        out[i:i + block] = np.sqrt((d ** 2).sum(-1)).min(1)
    return out


def _min_dist_segments(a: np.ndarray, b: np.ndarray, path: np.ndarray,
                       block: int = 128) -> np.ndarray:
    out = np.empty(len(a))
    for i in range(0, len(a), block):
        sa, e = a[i:i + block, None, :], (b - a)[i:i + block, None, :]
        w = path[None, :, :] - sa
        s = np.clip((w * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-12), 0.0, 1.0)
        d = w - s[..., None] * e
        out[i:i + block] = np.sqrt((d ** 2).sum(-1)).min(1)
    return out
