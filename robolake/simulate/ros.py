"""ROS message encoding: the sensor messages as rosbags dataclasses, serialised as CDR
(ROS 2, for MCAP) or in the ROS 1 wire format (for bags)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from robolake.simulate.imu import IMU_ACCEL_NOISE, IMU_GYRO_NOISE


@cache
def _typestore(ros1: bool) -> Any:
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)


_IMU_ORIENTATION_COV = np.diag([1e-3, 1e-3, 1e-3]).ravel()
_IMU_GYRO_COV = np.diag([IMU_GYRO_NOISE ** 2] * 3).ravel()
_IMU_ACCEL_COV = np.diag([IMU_ACCEL_NOISE ** 2] * 3).ravel()
_GPS_COV_FIX = np.diag([0.25, 0.25, 1.0]).ravel()
_GPS_COV_NONE = np.zeros(9)


class Codec:
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
