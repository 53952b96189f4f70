"""The IMU: what an accelerometer and gyro on the robot measure along the trajectory."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from robolake.simulate.draft import Draft
    from robolake.simulate.ros import Codec

GRAVITY = 9.80665
IMU_ACCEL_NOISE = 0.05  # m/s², std of the gaussian noise on linear_acceleration
IMU_GYRO_NOISE = 0.005  # rad/s


class ImuSource:
    """Specific force (ax = dv/dt, ay = v*w, az = g, plus a legged robot's gait) and yaw
    rate, with gaussian noise; orientation is the heading. A fault may overwrite `acc`."""

    def __init__(self, rec: Draft):
        t, n, traj, profile = rec.rel_t["imu"], rec.counts["imu"], rec.traj, rec.profile
        noise = rec.rngs["imu"].normal(0.0, 1.0, (n, 6))
        v, w, self.heading = traj.speed(t), traj.yaw_rate(t), traj.heading(t)
        self.acc = np.stack([traj.accel(t), v * w, np.full(n, GRAVITY)], axis=1)
        if profile.gait_accel:
            self.acc[:, 2] += profile.gait_accel * np.sin(2 * math.pi * profile.gait_hz * t
                                                          + traj.gait_phase)
        self.acc += IMU_ACCEL_NOISE * noise[:, :3]
        self.gyro = np.stack([np.zeros(n), np.zeros(n), w], axis=1) + IMU_GYRO_NOISE * noise[:, 3:]

    def messages(self, codec: Codec, frame_id: str) -> Callable[[int, int], Any]:
        psi = self.heading
        q = np.stack([np.zeros(len(psi)), np.zeros(len(psi)), np.sin(psi / 2), np.cos(psi / 2)],
                     axis=1).tolist()
        acc, gyro = self.acc.tolist(), self.gyro.tolist()

        def message(i: int, stamp: int) -> Any:
            return codec.imu(codec.header(stamp, frame_id, i), q[i], gyro[i], acc[i])

        return message
