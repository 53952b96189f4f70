"""The sensors a recording holds: topic, message type, rate, frame, and what makes their data.

Adding a sensor: a module with its source (a class built from the `Draft` whose
`messages(codec, frame_id)` returns the function that builds message i), a
message constructor in `Codec` (robolake.simulate.ros) when its type is new, and
an entry here; noise it draws comes from a random stream of its own, appended
last in `draft._streams` so the other sensors' data stay what they were.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from robolake.simulate.camera import CameraSource
from robolake.simulate.gps import GpsSource
from robolake.simulate.imu import ImuSource
from robolake.simulate.lidar import LidarSource

if TYPE_CHECKING:
    from robolake.simulate.draft import Draft
    from robolake.simulate.ros import Codec

COUNT_RULE = (
    "per topic, floor(duration_s * rate_hz) distinct messages; message i has log time "
    "start_ns + i * period_ns (period_ns = 1e9 // rate_hz); 'count' adds written duplicates"
)


class Source(Protocol):
    """One sensor's data in one recording (faults may change it before it is written)."""

    def messages(self, codec: Codec, frame_id: str) -> Callable[[int, int], Any]:
        """The function that builds message i (a rosbags dataclass) with header stamp ns."""
        ...


@dataclass(frozen=True)
class Sensor:
    key: str
    topic: str
    msgtype: str  # ROS 2 spelling; ROS 1 bags store it without "/msg/"
    rate_hz: int
    frame_id: str
    source: Callable[[Draft], Source]

    @property
    def period_ns(self) -> int:
        return 1_000_000_000 // self.rate_hz

    @property
    def ros1_msgtype(self) -> str:
        return self.msgtype.replace("/msg/", "/")


SENSORS = (
    Sensor("imu", "/imu", "sensor_msgs/msg/Imu", 100, "imu_link", ImuSource),
    Sensor("gps", "/gps/fix", "sensor_msgs/msg/NavSatFix", 1, "gps_link", GpsSource),
    Sensor("lidar", "/lidar/points", "sensor_msgs/msg/PointCloud2", 10, "lidar_link",
           LidarSource),
    Sensor("camera", "/camera/front/image/compressed", "sensor_msgs/msg/CompressedImage", 30,
           "camera_front_optical_frame", CameraSource),
)
TOPICS = {s.key: s.topic for s in SENSORS}


def message_count(duration_s: float, rate_hz: float) -> int:
    """floor(duration_s * rate_hz), robust to float noise like 0.29 * 100 = 28.999…"""
    return max(0, math.floor(duration_s * rate_hz + 1e-9))
