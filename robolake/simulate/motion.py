"""The robot's path: smooth speed and yaw rate (analytic), the path they integrate to."""

from __future__ import annotations

import math

import numpy as np

from robolake.simulate.robots import Profile

EARTH_RADIUS_M = 6378137.0


class Trajectory:
    """Smooth v(t), w(t) (analytic) and the path they integrate to, in local ENU metres."""

    def __init__(self, rng: np.random.Generator, profile: Profile, duration_s: float):
        self.profile = profile
        vmax, wmax = profile.max_speed_mps, profile.max_yaw_rate
        # speed in [0.2, 1.0] * vmax; yaw rate in [-wmax, wmax]
        self.v_terms = [
            (vmax * 0.25, 2 * math.pi * rng.uniform(0.01, 0.03), rng.uniform(0, 2 * math.pi)),
            (vmax * 0.15, 2 * math.pi * rng.uniform(0.05, 0.12), rng.uniform(0, 2 * math.pi)),
        ]
        self.v_mean = vmax * 0.6
        self.w_terms = [
            (wmax * 0.6, 2 * math.pi * rng.uniform(0.01, 0.04), rng.uniform(0, 2 * math.pi)),
            (wmax * 0.4, 2 * math.pi * rng.uniform(0.05, 0.15), rng.uniform(0, 2 * math.pi)),
        ]
        self.psi0 = rng.uniform(-math.pi, math.pi)
        self.offset_en = rng.uniform(-1500.0, 1500.0, size=2)  # per-robot start, from origin
        self.gait_phase = rng.uniform(0, 2 * math.pi)
        # integrate the path on a fine grid; other times interpolate (error << 1 mm)
        self.grid_dt = 0.01
        n = int(math.ceil(max(duration_s, 0.0) / self.grid_dt)) + 2
        t = np.arange(n) * self.grid_dt
        v, psi = self.speed(t), self.heading(t)
        vx, vy = v * np.cos(psi), v * np.sin(psi)
        half = 0.5 * self.grid_dt
        self.grid_t = t
        self.grid_x = self.offset_en[0] + np.concatenate(
            ([0.0], np.cumsum((vx[1:] + vx[:-1]) * half)))
        self.grid_y = self.offset_en[1] + np.concatenate(
            ([0.0], np.cumsum((vy[1:] + vy[:-1]) * half)))

    def speed(self, t: np.ndarray) -> np.ndarray:
        return self.v_mean + sum(a * np.sin(f * t + p) for a, f, p in self.v_terms)

    def accel(self, t: np.ndarray) -> np.ndarray:
        return sum(a * f * np.cos(f * t + p) for a, f, p in self.v_terms)

    def yaw_rate(self, t: np.ndarray) -> np.ndarray:
        return sum(a * np.sin(f * t + p) for a, f, p in self.w_terms)

    def heading(self, t: np.ndarray) -> np.ndarray:
        # exact integral of yaw_rate; unwrapped (continuous) radians, ENU (0 = east, CCW)
        return self.psi0 + sum(a * (math.cos(p) - np.cos(f * t + p)) / f
                               for a, f, p in self.w_terms)

    def position(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(t, self.grid_t, self.grid_x), np.interp(t, self.grid_t, self.grid_y)

    def summary(self, duration_s: float, origin: tuple[float, float, float]) -> dict:
        """What the ground truth says about the motion up to `duration_s`."""
        inside = self.grid_t <= duration_s
        v_all = self.speed(self.grid_t[inside])
        step = np.hypot(np.diff(self.grid_x[inside]), np.diff(self.grid_y[inside]))
        lat0, lon0 = enu_to_geodetic(self.grid_x[:1], self.grid_y[:1], origin)
        return {
            "max_speed_mps": self.profile.max_speed_mps,
            "speed_range_mps": [float(v_all.min()), float(v_all.max())],
            "distance_m": float(step.sum()),
            "start_lat": float(lat0[0]),
            "start_lon": float(lon0[0]),
            "altitude_m": origin[2],
        }


def enu_to_geodetic(east: np.ndarray, north: np.ndarray,
                    origin: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    lat0, lon0, _ = origin
    lat = lat0 + np.degrees(north / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(east / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return lat, lon
