"""Reading real recordings from ../shared/data without decoding messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from robolake import recordings as rec
from robolake.raw import utc_date


def _topics(info: rec.RecordingInfo) -> dict[str, tuple[str, int]]:
    return {t.topic: (t.msgtype, t.count) for t in info.topics}


@pytest.mark.parametrize("name", ["husky_ros2_converted.mcap",
                                  "robot_localization_test1_husky.bag"])
def test_husky_topics_and_counts(shared_data: Path, name: str):
    info = rec.inspect_recording(shared_data / name)
    topics = _topics(info)
    # counts from MANIFEST.md; ROS 1 types are normalised to the ROS 2 spelling
    assert topics["/imu/data"] == ("sensor_msgs/msg/Imu", 11865)
    assert topics["/fix"] == ("sensor_msgs/msg/NavSatFix", 989)
    assert topics["/husky_velocity_controller/odom"] == ("nav_msgs/msg/Odometry", 3952)
    assert info.message_count == 16806
    assert info.structural_errors == []
    assert info.warnings == ([] if name.endswith(".bag") else [
        "integrity not verifiable: 8 of 8 chunks carry no CRC and the data section has none "
        "(written without checksums, as rosbags-convert does); flipped bits would go unnoticed"])
    assert info.declared_counts == {t: c for t, (_, c) in topics.items()}
    assert 395.0 < (info.end_ns - info.start_ns) / 1e9 < 395.5
    assert rec.sensor_kind(topics["/imu/data"][0]) == "imu"
    assert all(t.backwards_steps == 0 for t in info.topics)


def test_sick_bag_custom_types_are_indexed(shared_data: Path):
    info = rec.inspect_recording(shared_data / "sick_rms1000_lms1000_movement_off.bag")
    topics = _topics(info)
    assert topics["/sick_lms_1xx/scan"] == ("sensor_msgs/msg/LaserScan", 89)
    assert topics["/cloud"] == ("sensor_msgs/msg/PointCloud2", 89)
    assert topics["/radar"] == ("sick_scan/msg/RadarScan", 34)  # custom type, not fatal
    assert info.message_count == 518
    assert info.identity is None  # real files carry no Robolake identity


def test_ulog_absolute_time_from_gps(shared_data: Path):
    info = rec.inspect_recording(shared_data / "pyulog_sample_log_small_cubeorange.ulg")
    assert info.format == "ulog"
    assert info.structural_errors == []
    topics = _topics(info)
    assert topics["sensor_combined"] == ("px4/sensor_combined", 1298)
    assert topics["vehicle_gps_position"][1] == 32
    # 2021-04-21 per MANIFEST.md: boot-relative stamps were moved onto the UTC clock
    assert utc_date(info.start_ns) == "2021-04-21"


def test_probe_reads_identity_and_start_cheaply(shared_data: Path):
    fmt, identity, start = rec.probe_recording(shared_data / "husky_ros2_converted.mcap")
    assert (fmt, identity, start) == ("mcap", None, 1432235498025043042)
    fmt, identity, start = rec.probe_recording(shared_data / "robot_localization_test1_husky.bag")
    assert (fmt, start) == ("bag", 1432235498025043042)


def test_wrong_magic_and_truncation(shared_data: Path, tmp_path: Path):
    data = (shared_data / "husky_ros2_converted.mcap").read_bytes()
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"NOTMCAP!" + data[8:])
    with pytest.raises(rec.RecordingError, match="unknown format"):
        rec.inspect_recording(bad)

    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    info = rec.inspect_recording(cut)
    assert info.structural_errors and info.structural_errors[0].startswith("truncated")
    assert 0 < info.message_count < 16806

    cut_bag = tmp_path / "cut.bag"
    cut_bag.write_bytes((shared_data / "robot_localization_test1_husky.bag").read_bytes()[:500_000])
    info = rec.inspect_recording(cut_bag)  # the index is gone: the chunks are scanned
    assert info.structural_errors == [
        "truncated: the file (500000 bytes) ends inside a record's data at byte 460755, which "
        "declares 131569 bytes"]
    assert info.message_count == 5264
