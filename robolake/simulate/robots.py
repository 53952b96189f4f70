"""Who is simulated: robot types and how they move, regions, identities."""

from __future__ import annotations

from dataclasses import dataclass

ROBOT_TYPES = ("delivery", "warehouse_amr", "quadruped")

# GPS origins (lat deg, lon deg, alt m), named like the cloud regions they sit in:
# Dublin, Ashburn (Virginia), Mumbai.
REGIONS: dict[str, tuple[float, float, float]] = {
    "eu-west": (53.3498, -6.2603, 20.0),
    "us-east": (39.0438, -77.4874, 90.0),
    "ap-south": (19.0760, 72.8777, 14.0),
}


@dataclass(frozen=True)
class RobotIdentity:
    robot_id: str
    robot_type: str
    region: str

    def as_dict(self) -> dict[str, str]:
        return {"robot_id": self.robot_id, "robot_type": self.robot_type, "region": self.region}


@dataclass(frozen=True)
class Profile:
    max_speed_mps: float
    max_yaw_rate: float
    lidar_height_m: float
    gait_hz: float = 0.0  # legged robots bob: a vertical acceleration oscillation
    gait_accel: float = 0.0


_PROFILES = {
    "delivery": Profile(1.8, 0.35, 0.45),
    "warehouse_amr": Profile(2.0, 0.5, 0.35),
    "quadruped": Profile(1.5, 0.6, 0.55, gait_hz=2.2, gait_accel=0.6),
}
_DEFAULT_PROFILE = Profile(1.5, 0.4, 0.5)


def profile_of(robot_type: str) -> Profile:
    return _PROFILES.get(robot_type, _DEFAULT_PROFILE)
