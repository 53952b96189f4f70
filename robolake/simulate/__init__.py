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

The parts: `robots` (types, regions, identities), `motion` (the path),
`world` and `lidar` (ray-casting), `camera`, `imu`, `gps` (each sensor's data),
`sensors` (the sensor table), `faults` (one function per fault kind), `ros`
(message encoding), `writers` (MCAP, bag), `draft` (one recording being made),
`recording` (`simulate_recording`) and `fleet` (`simulate_fleet`).

This package never imports dagster.
"""

from robolake.simulate.faults import (
    BAD_MAGIC,
    CLOCK_OFFSET_NS,
    FAULT_KINDS,
    FUTURE_SHIFT_NS,
    FUTURE_TAIL_S,
    LIDAR_FAR_RANGE_M,
    QUARANTINE_FAULTS,
    TRUNCATE_FRACTION,
)
from robolake.simulate.fleet import (
    FLEET_STAGGER_S,
    FLEET_START_HOUR_UTC,
    assign_faults,
    fleet_identity,
    fleet_start_ns,
    simulate_fleet,
)
from robolake.simulate.imu import GRAVITY, IMU_ACCEL_NOISE, IMU_GYRO_NOISE
from robolake.simulate.lidar import LIDAR_MAX_CLEAN_RANGE_M
from robolake.simulate.motion import EARTH_RADIUS_M
from robolake.simulate.recording import simulate_recording
from robolake.simulate.robots import REGIONS, ROBOT_TYPES, RobotIdentity
from robolake.simulate.sensors import COUNT_RULE, SENSORS, message_count
from robolake.simulate.writers import FORMATS, recording_file_name

__all__ = [
    "BAD_MAGIC", "CLOCK_OFFSET_NS", "COUNT_RULE", "EARTH_RADIUS_M", "FAULT_KINDS",
    "FLEET_STAGGER_S", "FLEET_START_HOUR_UTC", "FORMATS", "FUTURE_SHIFT_NS", "FUTURE_TAIL_S",
    "GRAVITY", "IMU_ACCEL_NOISE", "IMU_GYRO_NOISE", "LIDAR_FAR_RANGE_M",
    "LIDAR_MAX_CLEAN_RANGE_M", "QUARANTINE_FAULTS", "REGIONS", "ROBOT_TYPES", "SENSORS",
    "TRUNCATE_FRACTION", "RobotIdentity", "assign_faults", "fleet_identity", "fleet_start_ns",
    "message_count", "recording_file_name", "simulate_fleet", "simulate_recording",
]
