"""Fleet simulator: synthetic robot recordings whose ground truth is known exactly.

Each recording is a ROS 2 MCAP (CDR) or a ROS 1 bag with four sensors: IMU
(100 Hz), GNSS fix (1 Hz), LiDAR point cloud (10 Hz) and a JPEG camera
(30 Hz). The robot drives a smooth, physically consistent path: speed v(t) and
yaw rate w(t) are sums of slow sinusoids, the IMU measures their derivatives
(ax = dv/dt, ay = v*w, az = g), the fixes follow the integrated path, the
LiDAR ray-casts a static world (pillars, walls, ground, a distant facade) and
the camera looks at a panorama that pans with the heading.

Faults (FAULT_KINDS) damage a recording in a known way; the returned truth
says what was done, so the raw and cleaned layers can be checked against it.
Everything is a function of the arguments: the same inputs give byte-identical
files, and the wall clock is never read.

This module never imports dagster.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROBOT_TYPES = ("delivery", "warehouse_amr", "quadruped")

# GPS origins (lat deg, lon deg, alt m), named like the cloud regions they sit in:
# Dublin, Ashburn (Virginia), Mumbai.
REGIONS: dict[str, tuple[float, float, float]] = {
    "eu-west": (53.3498, -6.2603, 20.0),
    "us-east": (39.0438, -77.4874, 90.0),
    "ap-south": (19.0760, 72.8777, 14.0),
}

FAULT_KINDS = (
    "duplicate_messages",
    "lidar_far_returns",
    "imu_spikes",
    "gps_dropouts",
    "black_frames",
    "truncated",
    "bad_magic",
    "no_identity",
    "future_timestamps",
    "clock_offset",
)

# A recording with one of these faults must end up in quarantine, whatever its score.
QUARANTINE_FAULTS = ("truncated", "bad_magic", "no_identity", "future_timestamps")

FORMATS = {"mcap": ".mcap", "bag": ".bag"}

GRAVITY = 9.80665
EARTH_RADIUS_M = 6378137.0
IMU_ACCEL_NOISE = 0.05  # m/s², std of the gaussian noise on linear_acceleration
IMU_GYRO_NOISE = 0.005  # rad/s
CLOCK_OFFSET_NS = 2_500_000_000
FUTURE_SHIFT_NS = 400 * 86_400 * 1_000_000_000
FUTURE_TAIL_S = 5.0
TRUNCATE_FRACTION = 0.6
BAD_MAGIC = {"mcap": b"NOTMCAP!", "bag": b"NOTABAG!"}
LIDAR_MAX_CLEAN_RANGE_M = 100.0
LIDAR_FAR_RANGE_M = (200.0, 400.0)  # fault returns lie in (200, 400]
IMU_OUTLIER_NORM = 20.0  # m/s²; spikes are well above it
FLEET_START_HOUR_UTC = 8
FLEET_STAGGER_S = 7 * 60

COUNT_RULE = (
    "per topic, floor(duration_s * rate_hz) distinct messages; message i has log time "
    "start_ns + i * period_ns (period_ns = 1e9 // rate_hz); 'count' adds written duplicates"
)


@dataclass(frozen=True)
class RobotIdentity:
    robot_id: str
    robot_type: str
    region: str

    def as_dict(self) -> dict[str, str]:
        return {"robot_id": self.robot_id, "robot_type": self.robot_type, "region": self.region}


@dataclass(frozen=True)
class _Sensor:
    key: str
    topic: str
    msgtype: str  # ROS 2 spelling; ROS 1 bags store it without "/msg/"
    rate_hz: int
    frame_id: str

    @property
    def period_ns(self) -> int:
        return 1_000_000_000 // self.rate_hz


SENSORS = (
    _Sensor("imu", "/imu", "sensor_msgs/msg/Imu", 100, "imu_link"),
    _Sensor("gps", "/gps/fix", "sensor_msgs/msg/NavSatFix", 1, "gps_link"),
    _Sensor("lidar", "/lidar/points", "sensor_msgs/msg/PointCloud2", 10, "lidar_link"),
    _Sensor("camera", "/camera/front/image/compressed", "sensor_msgs/msg/CompressedImage", 30,
            "camera_front_optical_frame"),
)
_SENSOR_INDEX = {s.key: i for i, s in enumerate(SENSORS)}


@dataclass(frozen=True)
class _Profile:
    max_speed_mps: float
    max_yaw_rate: float
    lidar_height_m: float
    gait_hz: float = 0.0  # legged robots bob: a vertical acceleration oscillation
    gait_accel: float = 0.0


_PROFILES = {
    "delivery": _Profile(1.8, 0.35, 0.45),
    "warehouse_amr": _Profile(2.0, 0.5, 0.35),
    "quadruped": _Profile(1.5, 0.6, 0.55, gait_hz=2.2, gait_accel=0.6),
}
_DEFAULT_PROFILE = _Profile(1.5, 0.4, 0.5)


def message_count(duration_s: float, rate_hz: float) -> int:
    """floor(duration_s * rate_hz), robust to float noise like 0.29 * 100 = 28.999…"""
    return max(0, math.floor(duration_s * rate_hz + 1e-9))


def recording_file_name(robot_id: str, start_ns: int, fmt: str) -> str:
    stamp = datetime.fromtimestamp(start_ns // 1_000_000_000, UTC).strftime("%Y%m%dT%H%M%S")
    return f"{robot_id}_{stamp}{FORMATS[fmt]}"


# --------------------------------------------------------------------------- randomness


def _seed_sequence(seed: int, robot_id: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(robot_id.encode())])


def _streams(seed: int, robot_id: str) -> dict[str, np.random.Generator]:
    # Fixed stream layout: adding a fault never changes the clean sensor data.
    names = ("motion", "world", "imu", "lidar", "camera", *FAULT_KINDS)
    children = _seed_sequence(seed, robot_id).spawn(len(names))
    return {n: np.random.default_rng(c) for n, c in zip(names, children, strict=True)}


# --------------------------------------------------------------------------- motion


class _Trajectory:
    """Smooth v(t), w(t) (analytic) and the path they integrate to, in local ENU metres."""

    def __init__(self, rng: np.random.Generator, profile: _Profile, duration_s: float):
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


def _enu_to_geodetic(east: np.ndarray, north: np.ndarray,
                     origin: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    lat0, lon0, _ = origin
    lat = lat0 + np.degrees(north / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(east / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return lat, lon


# --------------------------------------------------------------------------- LiDAR world


_LIDAR_REACH_M = 61.0  # nothing beyond the facade (<= 60.5 m) can be seen
_LIDAR_RING_ELEVATIONS_DEG = (-12.0, -8.0, -5.0, -3.0, -1.5, 0.0, 2.0, 4.0)


class _World:
    """A static 2.5-D world in ENU: round pillars, straight walls, flat ground, a far facade."""

    def __init__(self, rng: np.random.Generator, traj: _Trajectory, duration_s: float):
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


class _Lidar:
    """A spinning multi-ring LiDAR. Obstacles are 2.5-D (tall), so the horizontal
    range depends on azimuth only: it is ray-cast once per column, shared by the rings."""

    def __init__(self, world: _World, traj: _Trajectory, n_points: int, height_m: float,
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


# --------------------------------------------------------------------------- camera


class _Camera:
    """A 90° view into a 360° panorama: panning follows heading, shading follows position."""

    def __init__(self, rng: np.random.Generator, traj: _Trajectory, size: tuple[int, int]):
        self.w, self.h = int(size[0]), int(size[1])
        self.traj, self.rng = traj, rng
        wp = 4 * self.w
        rows = (np.arange(self.h) / max(self.h - 1, 1))[:, None]
        cols = np.arange(wp)[None, :]
        horizon = 0.5
        sky = np.stack([135 - 40 * rows, 180 - 40 * rows, 235 - 30 * rows], -1)
        ground = np.stack([95 + 0 * rows, 88 + 0 * rows, 80 + 0 * rows], -1)
        ground = ground + 18 * np.sin(2 * np.pi * (cols * 9 / wp + rows * 7))[..., None]
        pano = np.where((rows < horizon)[..., None], sky * np.ones((1, wp, 1)), ground)
        # buildings: column bands with their own height and colour
        edges = np.sort(rng.choice(np.arange(1, wp), size=min(11, wp - 1), replace=False))
        for lo, hi in zip(np.concatenate(([0], edges)), np.concatenate((edges, [wp])), strict=True):
            top = horizon - rng.uniform(0.05, 0.4)
            colour = rng.uniform(40, 220, 3)
            band = (rows >= top) & (rows < horizon)
            stripes = 1 + 0.15 * np.sin(2 * np.pi * np.arange(lo, hi) * 3 / max(self.w, 1))
            pano[:, lo:hi] = np.where(band[..., None], colour * stripes[None, :, None],
                                      pano[:, lo:hi])
        self.pano = pano.astype(np.float32)
        self.wp = wp

    def pixels(self, t: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8 frames for the relative times `t` (seconds)."""
        psi = self.traj.heading(t)
        x, y = self.traj.position(t)
        shift = np.rint(psi / (2 * math.pi) * self.wp).astype(np.int64)
        cols = (np.arange(self.w)[None, :] - shift[:, None]) % self.wp  # (F, W)
        shade = (1.0 + 0.15 * np.sin(x / 9.0) * np.cos(y / 11.0)).astype(np.float32)
        img = np.moveaxis(self.pano[:, cols], 1, 0) * shade[:, None, None, None]
        img += self.rng.integers(-7, 8, img.shape, dtype=np.int16)  # sensor noise
        return np.clip(img, 0, 255).astype(np.uint8)


class _Blocks:
    """Frames made in blocks (vectorised), handed out one at a time in increasing order."""

    def __init__(self, make: Callable[[np.ndarray], np.ndarray], t: np.ndarray, size: int = 64):
        self.make, self.t, self.size = make, t, size
        self.first, self.frames = -1, np.zeros(0)

    def __getitem__(self, i: int) -> np.ndarray:
        first = i - i % self.size
        if first != self.first:
            self.first, self.frames = first, self.make(self.t[first:first + self.size])
        return self.frames[i - first]


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


# --------------------------------------------------------------------------- messages


@cache
def _typestore(ros1: bool) -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)


_IMU_ORIENTATION_COV = np.diag([1e-3, 1e-3, 1e-3]).ravel()
_IMU_GYRO_COV = np.diag([IMU_GYRO_NOISE ** 2] * 3).ravel()
_IMU_ACCEL_COV = np.diag([IMU_ACCEL_NOISE ** 2] * 3).ravel()
_GPS_COV_FIX = np.diag([0.25, 0.25, 1.0]).ravel()
_GPS_COV_NONE = np.zeros(9)


class _Codec:
    """Builds the four sensor messages as rosbags dataclasses and serialises them:
    CDR (ROS 2, for MCAP) or ROS 1 wire format (for bags). ROS 1 headers carry `seq`."""

    def __init__(self, ros1: bool):
        self.ros1 = ros1
        self.ts = ts = _typestore(ros1)
        t = ts.types
        self.Header, self.Time = t["std_msgs/msg/Header"], t["builtin_interfaces/msg/Time"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]
        self.Vector3 = t["geometry_msgs/msg/Vector3"]
        self.Imu, self.NavSatFix = t["sensor_msgs/msg/Imu"], t["sensor_msgs/msg/NavSatFix"]
        self.NavSatStatus = t["sensor_msgs/msg/NavSatStatus"]
        self.PointCloud2 = t["sensor_msgs/msg/PointCloud2"]
        self.CompressedImage = t["sensor_msgs/msg/CompressedImage"]
        pf = t["sensor_msgs/msg/PointField"]
        self.point_fields = [pf(name=n, offset=4 * i, datatype=pf.FLOAT32, count=1)
                             for i, n in enumerate(("x", "y", "z", "intensity"))]
        self._serialize = ts.serialize_ros1 if ros1 else ts.serialize_cdr

    def msgdef(self, msgtype: str) -> tuple[str, str]:
        """(definition text, md5) as ROS 1 / ROS 2 tools would write it."""
        if self.ros1:
            return self.ts.generate_msgdef(msgtype)
        return self.ts.generate_msgdef(msgtype, ros_version=2)

    def serialize(self, msg: Any, msgtype: str) -> bytes:
        return bytes(self._serialize(msg, msgtype))

    def header(self, ns: int, frame_id: str, seq: int) -> Any:
        stamp = self.Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
        if self.ros1:
            return self.Header(seq=seq, stamp=stamp, frame_id=frame_id)
        return self.Header(stamp=stamp, frame_id=frame_id)

    def imu(self, header: Any, q: tuple[float, float, float, float],
            gyro: Sequence[float], acc: Sequence[float]) -> Any:
        return self.Imu(
            header=header,
            orientation=self.Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]),
            orientation_covariance=_IMU_ORIENTATION_COV,
            angular_velocity=self.Vector3(x=gyro[0], y=gyro[1], z=gyro[2]),
            angular_velocity_covariance=_IMU_GYRO_COV,
            linear_acceleration=self.Vector3(x=acc[0], y=acc[1], z=acc[2]),
            linear_acceleration_covariance=_IMU_ACCEL_COV,
        )

    def navsatfix(self, header: Any, status: int, lat: float, lon: float, alt: float) -> Any:
        fix = status >= 0
        return self.NavSatFix(
            header=header,
            status=self.NavSatStatus(status=status, service=self.NavSatStatus.SERVICE_GPS),
            latitude=lat, longitude=lon, altitude=alt,
            position_covariance=_GPS_COV_FIX if fix else _GPS_COV_NONE,
            position_covariance_type=(self.NavSatFix.COVARIANCE_TYPE_DIAGONAL_KNOWN if fix
                                      else self.NavSatFix.COVARIANCE_TYPE_UNKNOWN),
        )

    def pointcloud(self, header: Any, points: np.ndarray) -> Any:
        n = len(points)
        return self.PointCloud2(
            header=header, height=1, width=n, fields=self.point_fields, is_bigendian=False,
            point_step=16, row_step=16 * n,
            data=np.frombuffer(points.astype("<f4").tobytes(), dtype=np.uint8),
            is_dense=True,
        )

    def compressed_image(self, header: Any, jpeg: bytes) -> Any:
        return self.CompressedImage(header=header, format="jpeg",
                                    data=np.frombuffer(jpeg, dtype=np.uint8))


class _McapSink:
    """ROS 2 MCAP: profile ros2, ros2msg schemas, CDR messages, zstd chunks.

    mcap_ros2.writer.Writer would re-encode every message with its interpreted CDR
    encoder (~3x slower than rosbags' generated one); this writes the same records
    with the plain MCAP writer from bytes that are serialised once.
    """

    def __init__(self, path: Path, codec: _Codec, identity: dict[str, str] | None):
        from mcap.well_known import MessageEncoding, Profile, SchemaEncoding
        from mcap.writer import LIBRARY_IDENTIFIER, CompressionType, Writer

        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile=Profile.ROS2, library=f"{LIBRARY_IDENTIFIER} robolake-simulate")
        if identity is not None:
            # first record after the header: a truncated file still carries its identity
            self._writer.add_metadata("robot", identity)
        self._channels = {}
        for s in SENSORS:
            schema_id = self._writer.register_schema(
                s.msgtype, SchemaEncoding.ROS2, codec.msgdef(s.msgtype)[0].encode())
            self._channels[s.key] = self._writer.register_channel(
                s.topic, MessageEncoding.CDR, schema_id)

    def write(self, sensor: _Sensor, log_time: int, data: bytes, seq: int, copies: int) -> None:
        channel = self._channels[sensor.key]
        for _ in range(copies):
            self._writer.add_message(channel, log_time, data, log_time, sequence=seq)

    def close(self) -> None:
        self._writer.finish()
        self._file.close()


class _BagSink:
    """ROS 1 bag v2.0, uncompressed chunks (rosbag's default)."""

    def __init__(self, path: Path, codec: _Codec):
        from rosbags.rosbag1 import Writer

        self._writer = Writer(path)
        self._writer.open()
        self._conns = {s.key: self._writer.add_connection(s.topic, s.msgtype, typestore=codec.ts)
                       for s in SENSORS}

    def write(self, sensor: _Sensor, log_time: int, data: bytes, seq: int, copies: int) -> None:
        for _ in range(copies):
            self._writer.write(self._conns[sensor.key], log_time, data)

    def close(self) -> None:
        self._writer.close()

# --------------------------------------------------------------------------- faults


def _pick(rng: np.random.Generator, candidates: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(rng.choice(candidates, size=k, replace=False)).astype(np.int64)


def _interior(n: int, exclude: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """Indices 1..n-2 (so faults have clean neighbours on both sides) minus `exclude`."""
    idx = np.arange(1, n - 1) if n > 2 else np.arange(n)
    return np.setdiff1d(idx, np.asarray(exclude, dtype=np.int64))


def _normalise_faults(faults: Sequence[str] | str) -> list[str]:
    if isinstance(faults, str):
        faults = [f for f in faults.split(",") if f.strip()]
    kinds = []
    for f in faults:
        kind = f.strip()
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        kinds.append(kind)
    return [k for k in FAULT_KINDS if k in kinds]  # canonical order, no repeats


# --------------------------------------------------------------------------- one recording


def simulate_recording(path: Path, robot: RobotIdentity, start_ns: int, duration_s: float,
                       seed: int, fmt: str = "mcap", faults: Sequence[str] = (), *,
                       lidar_points: int = 512,
                       image_size: tuple[int, int] = (64, 48)) -> dict:
    """Write one recording; return its ground truth (JSON-serialisable dict).

    `path` is the file to write, or an existing folder to write
    `<robot_id>_<YYYYMMDDTHHMMSS>.<mcap|bag>` into. An existing file is replaced.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected 'mcap' or 'bag'")
    if robot.region not in REGIONS:
        raise ValueError(f"unknown region {robot.region!r} for {robot.robot_id}: "
                         f"expected one of {', '.join(REGIONS)}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if lidar_points < 1 or image_size[0] < 8 or image_size[1] < 8:
        raise ValueError("lidar_points must be >= 1 and image_size at least (8, 8)")
    start_ns = int(start_ns)
    kinds = _normalise_faults(faults)
    path = Path(path)
    if path.is_dir():
        path = path / recording_file_name(robot.robot_id, start_ns, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = Path(f"{path}.meta.json")
    for stale in (path, sidecar):
        stale.unlink(missing_ok=True)

    rngs = _streams(seed, robot.robot_id)
    profile = _PROFILES.get(robot.robot_type, _DEFAULT_PROFILE)
    origin = REGIONS[robot.region]
    traj = _Trajectory(rngs["motion"], profile, duration_s)

    counts = {s.key: message_count(duration_s, s.rate_hz) for s in SENSORS}
    base_ns = {s.key: start_ns + np.arange(counts[s.key], dtype=np.int64) * s.period_ns
               for s in SENSORS}
    rel_t = {k: (v - start_ns) / 1e9 for k, v in base_ns.items()}
    details: dict[str, dict[str, Any]] = {}

    # IMU, fully vectorised
    t = rel_t["imu"]
    n = counts["imu"]
    noise = rngs["imu"].normal(0.0, 1.0, (n, 6))
    v, w, psi = traj.speed(t), traj.yaw_rate(t), traj.heading(t)
    acc = np.stack([traj.accel(t), v * w, np.full(n, GRAVITY)], axis=1)
    if profile.gait_accel:
        acc[:, 2] += profile.gait_accel * np.sin(2 * math.pi * profile.gait_hz * t
                                                 + traj.gait_phase)
    acc += IMU_ACCEL_NOISE * noise[:, :3]
    gyro = np.stack([np.zeros(n), np.zeros(n), w], axis=1) + IMU_GYRO_NOISE * noise[:, 3:]
    spikes = np.zeros(0, dtype=np.int64)
    if "imu_spikes" in kinds:
        r = rngs["imu_spikes"]
        spikes = _pick(r, _interior(n), max(3, n // 200))
        direction = r.normal(size=(len(spikes), 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        acc[spikes] = direction * r.uniform(30.0, 45.0, (len(spikes), 1))

    # GNSS
    t = rel_t["gps"]
    east, north = traj.position(t)
    lat, lon = _enu_to_geodetic(east, north, origin)
    gps_status = np.zeros(counts["gps"], dtype=np.int64)
    no_fix = nan_fix = np.zeros(0, dtype=np.int64)
    if "gps_dropouts" in kinds:
        m = counts["gps"]
        length = max(2, m // 6)
        first = min(max(1, int(m * 0.4)), max(m - 1 - length, 0))
        no_fix = np.arange(first, min(first + length, m), dtype=np.int64)
        gps_status[no_fix] = -1
        nan_fix = _pick(rngs["gps_dropouts"], _interior(m, no_fix), max(1, m // 30))
        lat[nan_fix] = np.nan
        lon[nan_fix] = np.nan

    # LiDAR and camera are made frame by frame while writing
    world = _World(rngs["world"], traj, duration_s)
    lidar = _Lidar(world, traj, lidar_points, profile.lidar_height_m, rngs["lidar"])
    far: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if "lidar_far_returns" in kinds:
        r = rngs["lidar_far_returns"]
        per_frame = max(1, lidar_points // 16)
        for k in _pick(r, _interior(counts["lidar"]), max(2, counts["lidar"] // 10)).tolist():
            idx = np.sort(r.choice(lidar_points, size=per_frame, replace=False))
            far[k] = (idx, r.uniform(LIDAR_FAR_RANGE_M[0] + 5, LIDAR_FAR_RANGE_M[1] - 5, per_frame))
    camera = _Camera(rngs["camera"], traj, image_size)
    black = np.zeros(0, dtype=np.int64)
    if "black_frames" in kinds:
        black = _pick(rngs["black_frames"], _interior(counts["camera"]),
                      max(2, counts["camera"] // 50))
    black_set = set(black.tolist())

    # duplicates avoid messages another fault already marked, so each effect counts once
    dups: dict[str, set[int]] = {s.key: set() for s in SENSORS}
    if "duplicate_messages" in kinds:
        r = rngs["duplicate_messages"]
        marked = {"imu": spikes, "lidar": np.array(sorted(far), dtype=np.int64), "camera": black}
        for key, share in (("imu", 100), ("lidar", 50), ("camera", 100)):
            chosen = _pick(r, _interior(counts[key], marked[key]), max(1, counts[key] // share))
            dups[key] = set(chosen.tolist())

    # final log times and header stamps
    log_ns = {k: v.copy() for k, v in base_ns.items()}
    if "future_timestamps" in kinds:
        cutoff = start_ns + int(round((duration_s - FUTURE_TAIL_S) * 1e9))
        for arr in log_ns.values():
            arr[arr >= cutoff] += FUTURE_SHIFT_NS
    offset = CLOCK_OFFSET_NS if "clock_offset" in kinds else 0
    stamp_ns = {k: v + offset for k, v in log_ns.items()}

    codec = _Codec(ros1=fmt == "bag")
    imu_q = np.stack([np.zeros(len(psi)), np.zeros(len(psi)), np.sin(psi / 2), np.cos(psi / 2)],
                     axis=1).tolist()
    imu_acc, imu_gyro = acc.tolist(), gyro.tolist()

    def imu_msg(i: int, stamp: int) -> Any:
        return codec.imu(codec.header(stamp, SENSORS[0].frame_id, i), imu_q[i], imu_gyro[i],
                         imu_acc[i])

    lat_l, lon_l, status_l = lat.tolist(), lon.tolist(), gps_status.tolist()

    def gps_msg(i: int, stamp: int) -> Any:
        return codec.navsatfix(codec.header(stamp, SENSORS[1].frame_id, i), status_l[i],
                               lat_l[i], lon_l[i], origin[2])

    lidar_t = rel_t["lidar"].tolist()

    def lidar_msg(i: int, stamp: int) -> Any:
        pts = lidar.frame(lidar_t[i], i)
        if i in far:
            idx, ranges = far[i]
            norms = np.linalg.norm(pts[idx, :3].astype(np.float64), axis=1)
            pts[idx, :3] = (pts[idx, :3] * (ranges / norms)[:, None]).astype(np.float32)
        return codec.pointcloud(codec.header(stamp, SENSORS[2].frame_id, i), pts)

    camera_frames = _Blocks(camera.pixels, rel_t["camera"])
    black_jpeg = _jpeg(np.zeros((camera.h, camera.w, 3), dtype=np.uint8)) if black_set else b""

    def camera_msg(i: int, stamp: int) -> Any:
        pixels = camera_frames[i]  # always drawn: keeps the noise stream aligned
        return codec.compressed_image(codec.header(stamp, SENSORS[3].frame_id, i),
                                      black_jpeg if i in black_set else _jpeg(pixels))

    builders: dict[str, Callable[[int, int], Any]] = {
        "imu": imu_msg, "gps": gps_msg, "lidar": lidar_msg, "camera": camera_msg}

    # write in log-time order (ties: sensor order); a duplicate follows its original
    keys = [s.key for s in SENSORS]
    all_t = np.concatenate([log_ns[k] for k in keys])
    all_s = np.concatenate([np.full(counts[k], j) for j, k in enumerate(keys)])
    all_i = np.concatenate([np.arange(counts[k]) for k in keys])
    order = np.lexsort((all_i, all_s, all_t))
    identity = robot.as_dict()
    write_identity = "no_identity" not in kinds
    sink: _McapSink | _BagSink
    if fmt == "mcap":
        sink = _McapSink(path, codec, identity if write_identity else None)
    else:
        sink = _BagSink(path, codec)
    try:
        stamps_l = {k: v.tolist() for k, v in stamp_ns.items()}
        logs_l = {k: v.tolist() for k, v in log_ns.items()}
        for j, i in zip(all_s[order].tolist(), all_i[order].tolist(), strict=True):
            s = SENSORS[j]
            data = codec.serialize(builders[s.key](i, stamps_l[s.key][i]), s.msgtype)
            sink.write(s, logs_l[s.key][i], data, i, 2 if i in dups[s.key] else 1)
    finally:
        sink.close()
    if fmt == "bag" and write_identity:
        sidecar.write_text(json.dumps(identity, sort_keys=True) + "\n")

    # --- ground truth
    def times(key: str, idx: Sequence[int] | np.ndarray) -> list[int]:
        return [int(log_ns[key][i]) for i in sorted(idx)]

    if "duplicate_messages" in kinds:
        per_topic = {SENSORS[_SENSOR_INDEX[k]].topic: len(v) for k, v in dups.items() if v}
        details["duplicate_messages"] = {
            "count": sum(per_topic.values()),
            "per_topic": per_topic,
            "log_times_ns": {SENSORS[_SENSOR_INDEX[k]].topic: times(k, v)
                             for k, v in dups.items() if v},
        }
    if "lidar_far_returns" in kinds:
        frames = sorted(far)
        per_frame = len(far[frames[0]][0]) if frames else 0
        details["lidar_far_returns"] = {
            "topic": SENSORS[2].topic,
            "total_far_points": per_frame * len(frames),
            "frames_affected": len(frames),
            "log_times_ns": times("lidar", frames),
            "far_points_per_frame": per_frame,
            "expected_kept_points_per_frame": lidar_points - per_frame,
            "points_per_frame": lidar_points,
            "far_range_m": list(LIDAR_FAR_RANGE_M),
            "clean_max_range_m": LIDAR_MAX_CLEAN_RANGE_M,
        }
    if "imu_spikes" in kinds:
        norms = np.linalg.norm(acc[spikes], axis=1) if len(spikes) else np.zeros(0)
        details["imu_spikes"] = {
            "topic": SENSORS[0].topic,
            "count": len(spikes),
            "log_times_ns": times("imu", spikes),
            "threshold_mps2": IMU_OUTLIER_NORM,
            "min_norm_mps2": float(norms.min()) if len(norms) else None,
        }
    if "gps_dropouts" in kinds:
        invalid = np.union1d(no_fix, nan_fix)
        details["gps_dropouts"] = {
            "topic": SENSORS[1].topic,
            "count": len(invalid),
            "no_fix_count": len(no_fix),
            "nan_count": len(nan_fix),
            "log_times_ns": times("gps", invalid),
            "no_fix_log_times_ns": times("gps", no_fix),
            "nan_log_times_ns": times("gps", nan_fix),
        }
    if "black_frames" in kinds:
        details["black_frames"] = {
            "topic": SENSORS[3].topic,
            "count": len(black),
            "log_times_ns": times("camera", black),
        }
    if "clock_offset" in kinds:
        details["clock_offset"] = {"offset_ns": CLOCK_OFFSET_NS,
                                   "rule": "header.stamp = log_time + offset_ns"}
    if "future_timestamps" in kinds:
        per_topic = {}
        for s in SENSORS:
            shifted = np.flatnonzero(log_ns[s.key] != base_ns[s.key])
            per_topic[s.topic] = len(shifted) + len(dups[s.key].intersection(shifted.tolist()))
        details["future_timestamps"] = {
            "shift_ns": FUTURE_SHIFT_NS,
            "cutoff_ns": start_ns + int(round((duration_s - FUTURE_TAIL_S) * 1e9)),
            "count": sum(per_topic.values()),
            "per_topic": per_topic,
        }
    if "no_identity" in kinds:
        details["no_identity"] = {"metadata_record": False, "sidecar": False}

    topics = {}
    for s in SENSORS:
        written = counts[s.key] + len(dups[s.key])
        topics[s.topic] = {
            "msgtype": s.msgtype if fmt == "mcap" else s.msgtype.replace("/msg/", "/"),
            "sensor": s.key,
            "rate_hz": s.rate_hz,
            "period_ns": s.period_ns,
            "frame_id": s.frame_id,
            "nominal_count": counts[s.key],
            "count": written,
        }
    all_log = np.concatenate([log_ns[k] for k in keys])

    # damage applied to the finished file, in this order
    original_size = path.stat().st_size
    if "bad_magic" in kinds:
        with open(path, "r+b") as f:
            f.write(BAD_MAGIC[fmt])
        details["bad_magic"] = {"magic_written": BAD_MAGIC[fmt].decode()}
    if "truncated" in kinds:
        cut = int(original_size * TRUNCATE_FRACTION)
        with open(path, "r+b") as f:
            f.truncate(cut)
        details["truncated"] = {"original_size": original_size, "truncated_size": cut,
                                "note": "topics, counts and end_ns describe the uncut file"}
    data = path.read_bytes()
    inside = traj.grid_t <= duration_s
    v_all = traj.speed(traj.grid_t[inside])
    step = np.hypot(np.diff(traj.grid_x[inside]), np.diff(traj.grid_y[inside]))
    lat0, lon0 = _enu_to_geodetic(traj.grid_x[:1], traj.grid_y[:1], origin)
    quarantine = [k for k in kinds if k in QUARANTINE_FAULTS]
    return {
        "file": path.name,
        "sidecar": sidecar.name if fmt == "bag" and write_identity else None,
        "format": fmt,
        "identity": identity,
        "seed": int(seed),
        "date": datetime.fromtimestamp(start_ns // 1_000_000_000, UTC).strftime("%Y-%m-%d"),
        "start_ns": int(all_log.min()) if all_log.size else start_ns,
        "end_ns": int(all_log.max()) if all_log.size else start_ns,
        "duration_s": float(duration_s),
        "count_rule": COUNT_RULE,
        "topics": topics,
        "message_count": sum(t["count"] for t in topics.values()),
        "lidar_points": lidar_points,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "motion": {
            "max_speed_mps": profile.max_speed_mps,
            "speed_range_mps": [float(v_all.min()), float(v_all.max())],
            "distance_m": float(step.sum()),
            "start_lat": float(lat0[0]),
            "start_lon": float(lon0[0]),
            "altitude_m": origin[2],
        },
        "faults": details,
        "expected_raw_status": "quarantined" if quarantine else "accepted",
        "quarantine_faults": quarantine,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# --------------------------------------------------------------------------- a fleet


def assign_faults(robots: int, faults: Sequence[str] | str) -> list[list[str]]:
    """Fault kinds per robot index. 'kind:N' targets robot N; a bare 'kind' goes
    round-robin from the last robot backwards, so robot 0 stays clean longest."""
    if isinstance(faults, str):
        faults = [f for f in faults.split(",") if f.strip()]
    out: list[list[str]] = [[] for _ in range(robots)]
    bare = 0
    for spec in faults:
        kind, _, target = spec.strip().partition(":")
        kind = kind.strip()
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} in {spec!r}: expected one of "
                             f"{', '.join(FAULT_KINDS)}, optionally as kind:ROBOT_INDEX")
        if target.strip():
            try:
                i = int(target)
            except ValueError:
                raise ValueError(f"fault {spec!r}: robot index {target!r} is not an integer"
                                 ) from None
            if not 0 <= i < robots:
                raise ValueError(f"fault {spec!r}: robot index {i} outside 0..{robots - 1}")
        else:
            if robots < 1:
                raise ValueError(f"fault {spec!r} given but there are no robots")
            i = (robots - 1 - bare) % robots
            bare += 1
        if kind not in out[i]:
            out[i].append(kind)
    return out


def fleet_identity(index: int, robot_types: Sequence[str] = ROBOT_TYPES[:2]) -> RobotIdentity:
    regions = list(REGIONS)
    return RobotIdentity(f"robot-{index:03d}", robot_types[index % len(robot_types)],
                         regions[index % len(regions)])


def fleet_start_ns(date: str, index: int, minutes: float) -> int:
    """`date` 08:00 UTC + index * 7 min; wraps so no recording crosses midnight."""
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"date {date!r}: expected YYYY-MM-DD") from None
    first = day + timedelta(hours=FLEET_START_HOUR_UTC)
    window_s = (24 - FLEET_START_HOUR_UTC) * 3600 - minutes * 60 - 1
    slots = max(1, int(window_s // FLEET_STAGGER_S) + 1)
    return int(first.timestamp()) * 1_000_000_000 + (index % slots) * FLEET_STAGGER_S * 10**9


def simulate_fleet(out_dir: Path, robots: int, date: str, minutes: float, seed: int,
                   fmt: str = "mcap", faults: Sequence[str] = (), *,
                   robot_types: Sequence[str] = ROBOT_TYPES[:2]) -> dict:
    """Write one recording per robot + out_dir/ground_truth.json; return the ground truth."""
    if robots < 1:
        raise ValueError(f"robots must be >= 1, got {robots}")
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected 'mcap' or 'bag'")
    unknown = [t for t in robot_types if t not in ROBOT_TYPES]
    if unknown or not robot_types:
        raise ValueError(f"robot types {unknown or '[]'}: expected some of {ROBOT_TYPES}")
    fleet_start_ns(date, 0, minutes)  # validates the date before anything is written
    per_robot = assign_faults(robots, faults)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings = []
    for i in range(robots):
        robot = fleet_identity(i, robot_types)
        start = fleet_start_ns(date, i, minutes)
        recordings.append(simulate_recording(
            out_dir / recording_file_name(robot.robot_id, start, fmt), robot, start,
            minutes * 60.0, seed, fmt, per_robot[i]))
    truth = {
        "seed": int(seed),
        "date": date,
        "minutes": float(minutes),
        "robots": robots,
        "format": fmt,
        "faults_requested": list(faults) if not isinstance(faults, str) else [faults],
        "recordings": recordings,
    }
    (out_dir / "ground_truth.json").write_text(json.dumps(truth, indent=2, sort_keys=False) + "\n")
    return truth
