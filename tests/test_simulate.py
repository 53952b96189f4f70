"""The fleet simulator writes what its ground truth says, read back with independent readers
(mcap + mcap_ros2's decoder for MCAP, rosbags for ROS 1 bags)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from robolake.simulate import (
    FAULT_KINDS,
    REGIONS,
    ROBOT_TYPES,
    RobotIdentity,
    assign_faults,
    simulate_fleet,
    simulate_recording,
)

START_NS = 1_772_438_400_000_000_000  # 2026-03-02T08:00:00Z
ROBOT = RobotIdentity("robot-042", "delivery", "eu-west")
RATES = {"/imu": 100, "/gps/fix": 1, "/lidar/points": 10, "/camera/front/image/compressed": 30}
ACCEPTED_FAULTS = ["duplicate_messages", "lidar_far_returns", "imu_spikes", "gps_dropouts",
                   "black_frames", "clock_offset"]


# --------------------------------------------------------------------------- reading back


@dataclass
class Msg:
    log_ns: int
    stamp_ns: int
    raw: bytes
    msg: Any


@dataclass
class Recording:
    topics: dict[str, list[Msg]] = field(default_factory=lambda: defaultdict(list))
    msgtypes: dict[str, str] = field(default_factory=dict)
    order: list[tuple[str, int]] = field(default_factory=list)  # (topic, log_ns) in file order
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)


def _stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def read_recording(path: Path, fmt: str) -> Recording:
    rec = Recording()
    if fmt == "mcap":
        from mcap.reader import make_reader
        from mcap_ros2.decoder import DecoderFactory

        with open(path, "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            for schema, channel, message, decoded in reader.iter_decoded_messages(
                    log_time_order=False):
                rec.msgtypes[channel.topic] = schema.name
                rec.topics[channel.topic].append(
                    Msg(message.log_time, _stamp_ns(decoded), bytes(message.data), decoded))
                rec.order.append((channel.topic, message.log_time))
            rec.metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
    else:
        from rosbags.rosbag1 import Reader
        from rosbags.typesys import Stores, get_typestore

        store = get_typestore(Stores.ROS1_NOETIC)
        with Reader(path) as reader:
            for conn, timestamp, raw in reader.messages():
                decoded = store.deserialize_ros1(raw, conn.msgtype)
                rec.msgtypes[conn.topic] = conn.msgtype
                rec.topics[conn.topic].append(Msg(timestamp, _stamp_ns(decoded), bytes(raw),
                                                  decoded))
                rec.order.append((conn.topic, timestamp))
    return rec


def points(msg: Any) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), dtype="<f4").reshape(-1, 4)


def pixels(msg: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(bytes(msg.data))))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def duplicate_times(msgs: list[Msg]) -> list[int]:
    """Log times of messages that repeat the previous one exactly (same time, same bytes)."""
    return [b.log_ns for a, b in zip(msgs, msgs[1:], strict=False)
            if a.log_ns == b.log_ns and a.raw == b.raw]


def enu(lat: np.ndarray, lon: np.ndarray, region: str) -> tuple[np.ndarray, np.ndarray]:
    lat0, lon0, _ = REGIONS[region]
    north = np.radians(lat - lat0) * 6378137.0
    east = np.radians(lon - lon0) * 6378137.0 * math.cos(math.radians(lat0))
    return east, north


def yaw(msg: Any) -> float:
    q = msg.orientation
    return math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y ** 2 + q.z ** 2))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, tuple[dict, Recording, Path]]:
    out = {}
    for fmt in ("mcap", "bag"):
        d = tmp_path_factory.mktemp(f"clean-{fmt}")
        truth = simulate_recording(d, ROBOT, START_NS, 10.05, seed=7, fmt=fmt)
        path = d / truth["file"]
        out[fmt] = (truth, read_recording(path, fmt), path)
    return out


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> dict[str, tuple[dict, Recording]]:
    out = {}
    for fmt in ("mcap", "bag"):
        d = tmp_path_factory.mktemp(f"faulty-{fmt}")
        truth = simulate_recording(d, ROBOT, START_NS, 12.0, seed=11, fmt=fmt,
                                   faults=ACCEPTED_FAULTS)
        out[fmt] = (truth, read_recording(d / truth["file"], fmt))
    return out


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("fmt", ["mcap", "bag"])
def test_counts_rates_and_timestamps(clean, fmt):
    truth, rec, path = clean[fmt]
    assert path.name == f"robot-042_20260302T080000.{fmt}"
    assert truth["file"] == path.name and truth["format"] == fmt
    assert set(rec.topics) == set(RATES) == set(truth["topics"])
    expected_counts = {"/imu": 1005, "/gps/fix": 10, "/lidar/points": 100,
                       "/camera/front/image/compressed": 301}  # floor(10.05 * rate)
    for topic, rate in RATES.items():
        msgs, t = rec.topics[topic], truth["topics"][topic]
        assert len(msgs) == expected_counts[topic] == t["count"] == t["nominal_count"]
        period = 1_000_000_000 // rate
        assert t["period_ns"] == period and t["rate_hz"] == rate
        log = np.array([m.log_ns for m in msgs])
        np.testing.assert_array_equal(log, START_NS + np.arange(len(msgs)) * period)
        assert [m.stamp_ns for m in msgs] == log.tolist()  # header.stamp == log time
        measured = (len(log) - 1) * 1e9 / (log[-1] - log[0])
        assert measured == pytest.approx(rate, rel=1e-6)
        assert {m.msg.header.frame_id for m in msgs} == {t["frame_id"]}
        # rosbags reports ROS 1 types in ROS 2 spelling; the file holds the truth's spelling
        written = t["msgtype"] if fmt == "mcap" else t["msgtype"].replace("/", "/msg/")
        assert rec.msgtypes[topic] == written
    assert truth["topics"]["/imu"]["msgtype"] == (
        "sensor_msgs/msg/Imu" if fmt == "mcap" else "sensor_msgs/Imu")
    all_log = [t for _, t in rec.order]
    assert all_log == sorted(all_log)  # written in log-time order
    assert truth["start_ns"] == START_NS == min(all_log)
    assert truth["end_ns"] == max(all_log) == START_NS + 1004 * 10_000_000
    assert truth["message_count"] == len(all_log)
    assert truth["faults"] == {} and truth["expected_raw_status"] == "accepted"
    assert truth["size_bytes"] == path.stat().st_size and truth["sha256"] == sha256(path)


def test_identity_metadata_record_and_sidecar(clean):
    truth, rec, path = clean["mcap"]
    ident = {"robot_id": "robot-042", "robot_type": "delivery", "region": "eu-west"}
    assert rec.metadata == {"robot": ident} and truth["identity"] == ident
    assert truth["sidecar"] is None and not Path(f"{path}.meta.json").exists()
    truth, _, path = clean["bag"]
    sidecar = Path(f"{path}.meta.json")
    assert truth["sidecar"] == sidecar.name
    assert json.loads(sidecar.read_text()) == ident
    assert path.read_bytes().startswith(b"#ROSBAG V2.0\n")


@pytest.mark.parametrize("fmt", ["mcap", "bag"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, fmt):
    robot = RobotIdentity("robot-001", "quadruped", "ap-south")

    def run(sub: str, seed: int) -> tuple[dict, Path]:
        truth = simulate_recording(tmp_path / sub, robot, START_NS, 3.0, seed, fmt,
                                   ["duplicate_messages", "imu_spikes"])
        return truth, tmp_path / sub / truth["file"]

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    (ta, pa), (tb, pb), (_, pc) = run("a", 5), run("b", 5), run("c", 6)
    assert sha256(pa) == sha256(pb) == ta["sha256"]
    assert ta == tb
    assert sha256(pc) != sha256(pa)
    # the same seed on another robot is another recording
    other = simulate_recording(tmp_path / "a", RobotIdentity("robot-002", "quadruped",
                                                              "ap-south"), START_NS, 3.0, 5, fmt)
    assert other["sha256"] != ta["sha256"]


# --------------------------------------------------------------------------- physics


def test_imu_gps_and_heading_agree(clean):
    truth, rec, _ = clean["mcap"]
    imu = rec.topics["/imu"]
    acc = np.array([[m.msg.linear_acceleration.x, m.msg.linear_acceleration.y,
                     m.msg.linear_acceleration.z] for m in imu])
    gz = np.array([m.msg.angular_velocity.z for m in imu])
    assert acc[:, 2].mean() == pytest.approx(9.80665, abs=0.02)
    assert np.linalg.norm(acc, axis=1).max() < 12.0  # clean: nothing near the 20 m/s² limit
    # quaternion yaw follows the integrated gyro
    yaws = np.unwrap([yaw(m.msg) for m in imu])
    integrated = yaws[0] + np.concatenate(([0.0], np.cumsum((gz[1:] + gz[:-1]) / 2 * 0.01)))
    assert np.abs(yaws - integrated).max() < 0.01

    fixes = rec.topics["/gps/fix"]
    assert {m.msg.status.status for m in fixes} == {0} and {m.msg.status.service
                                                            for m in fixes} == {1}
    lat = np.array([m.msg.latitude for m in fixes])
    lon = np.array([m.msg.longitude for m in fixes])
    assert {m.msg.altitude for m in fixes} == {REGIONS["eu-west"][2]}
    assert all(m.msg.position_covariance[0] > 0 for m in fixes)
    east, north = enu(lat, lon, "eu-west")
    assert np.hypot(east, north).max() < 3000.0  # near the region's origin
    # speed over each 1 s interval between fixes
    speed = np.hypot(np.diff(east), np.diff(north))
    lo, hi = truth["motion"]["speed_range_mps"]
    assert hi <= truth["motion"]["max_speed_mps"]
    assert lo * 0.99 <= speed.min() and speed.max() <= hi  # a chord is at most the arc
    assert speed.sum() < truth["motion"]["distance_m"] < speed.sum() + 2 * hi  # 9 s vs 10.05 s
    # speed change between interval midpoints == integral of ax over the same second
    t = (np.array([m.log_ns for m in imu]) - START_NS) / 1e9
    for k in range(len(speed) - 1):
        window = (t >= k + 0.5) & (t < k + 1.5)
        assert speed[k + 1] - speed[k] == pytest.approx(acc[window, 0].sum() * 0.01, abs=0.03)
    # the track's direction is the IMU heading at the middle of each interval
    track = np.unwrap(np.arctan2(np.diff(north), np.diff(east)))
    mid_yaw = np.interp(np.arange(len(track)) + 0.5, t, yaws)
    offset = np.round((mid_yaw - track) / (2 * np.pi)) * 2 * np.pi
    assert np.abs(mid_yaw - offset - track).max() < 0.02
    # centripetal acceleration: ay == v * w
    for k in range(len(speed)):
        window = (t >= k) & (t < k + 1)
        assert acc[window, 1].mean() == pytest.approx(speed[k] * gz[window].mean(), abs=0.03)


def test_lidar_and_camera_payloads(clean):
    truth, rec, _ = clean["mcap"]
    for m in rec.topics["/lidar/points"]:
        msg = m.msg
        assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 512, 16, 16 * 512)
        assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
            ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("intensity", 12, 7, 1)]
        pts = points(msg)
        ranges = np.linalg.norm(pts[:, :3], axis=1)
        assert len(pts) == 512 and 1.5 < ranges.min() and ranges.max() <= 100.0
        assert (pts[:, 3] >= 0).all()
    frames = rec.topics["/camera/front/image/compressed"]
    imgs = []
    for m in frames:
        assert m.msg.format == "jpeg" and bytes(m.msg.data[:2]) == b"\xff\xd8"
        img = Image.open(io.BytesIO(bytes(m.msg.data)))
        assert img.format == "JPEG" and img.size == (64, 48) and img.mode == "RGB"
        imgs.append(np.asarray(img, dtype=np.float32))
    # the view follows the pose: neighbours look alike, distant frames do not
    near = np.abs(imgs[1] - imgs[0]).mean()
    far = np.abs(imgs[-1] - imgs[0]).mean()
    assert imgs[0].std() > 20 and far > near


def test_custom_sizes_and_robot_type(tmp_path):
    robot = RobotIdentity("robot-q", "quadruped", "us-east")
    truth = simulate_recording(tmp_path / "q.mcap", robot, START_NS, 2.0, 3,
                               lidar_points=100, image_size=(80, 60))
    rec = read_recording(tmp_path / "q.mcap", "mcap")
    assert truth["file"] == "q.mcap" and truth["lidar_points"] == 100
    assert {len(points(m.msg)) for m in rec.topics["/lidar/points"]} == {100}
    assert {pixels(m.msg).shape for m in rec.topics["/camera/front/image/compressed"]} == {
        (60, 80, 3)}
    # the quadruped's gait shakes the vertical axis, on average still 1 g
    az = np.array([m.msg.linear_acceleration.z for m in rec.topics["/imu"]])
    assert az.mean() == pytest.approx(9.80665, abs=0.1) and az.std() > 0.2


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fmt", ["mcap", "bag"])
def test_accepted_faults_match_truth(faulty, fmt):
    truth, rec = faulty[fmt]
    faults = truth["faults"]
    assert list(faults) == ACCEPTED_FAULTS and truth["expected_raw_status"] == "accepted"

    # duplicates: identical bytes and log time right after the original
    dup = faults["duplicate_messages"]
    assert dup["per_topic"]["/imu"] == 12 and dup["count"] == sum(dup["per_topic"].values())
    for topic in RATES:
        times = duplicate_times(rec.topics[topic])
        assert times == dup["log_times_ns"].get(topic, [])
        assert len(rec.topics[topic]) == truth["topics"][topic]["count"] == (
            truth["topics"][topic]["nominal_count"] + len(times))
    unique = {topic: [m for prev, m in zip([None, *msgs[:-1]], msgs, strict=True)
                      if prev is None or (prev.log_ns, prev.raw) != (m.log_ns, m.raw)]
              for topic, msgs in rec.topics.items()}

    # IMU spikes above the 20 m/s² outlier limit
    spikes = faults["imu_spikes"]
    norm = np.array([math.dist((0, 0, 0), (m.msg.linear_acceleration.x,
                                           m.msg.linear_acceleration.y,
                                           m.msg.linear_acceleration.z))
                     for m in unique["/imu"]])
    log = np.array([m.log_ns for m in unique["/imu"]])
    assert spikes["count"] == 6 == int((norm > 20).sum())
    assert log[norm > 20].tolist() == spikes["log_times_ns"]
    assert norm[norm > 20].min() == pytest.approx(spikes["min_norm_mps2"])

    # GPS: a NO_FIX interval and NaN fixes
    gps = faults["gps_dropouts"]
    fixes = unique["/gps/fix"]
    no_fix = [m.log_ns for m in fixes if m.msg.status.status == -1]
    nan = [m.log_ns for m in fixes if math.isnan(m.msg.latitude) or math.isnan(m.msg.longitude)]
    assert no_fix == gps["no_fix_log_times_ns"] and len(no_fix) == gps["no_fix_count"] == 2
    assert nan == gps["nan_log_times_ns"] and len(nan) == gps["nan_count"] >= 1
    assert np.diff(no_fix).tolist() == [1_000_000_000]  # one contiguous interval
    assert sorted(no_fix + nan) == gps["log_times_ns"] and gps["count"] == len(no_fix + nan)

    # black frames decode to all zeros
    black = faults["black_frames"]
    dark = [m.log_ns for m in unique["/camera/front/image/compressed"]
            if not pixels(m.msg).any()]
    assert dark == black["log_times_ns"] and black["count"] == len(dark) == 7

    # far LiDAR returns: (200, 400] m, a fixed number per affected frame
    lidar = faults["lidar_far_returns"]
    affected, kept = [], []
    for m in unique["/lidar/points"]:
        r = np.linalg.norm(points(m.msg)[:, :3].astype(np.float64), axis=1)
        far = r > 200.0
        assert (r <= 400.0).all() and not ((r > 100.0) & ~far).any()
        if far.any():
            affected.append(m.log_ns)
            kept.append(int((~far).sum()))
            assert int(far.sum()) == lidar["far_points_per_frame"]
    assert affected == lidar["log_times_ns"] and len(affected) == lidar["frames_affected"] == 12
    assert set(kept) == {lidar["expected_kept_points_per_frame"]} == {480}
    assert lidar["total_far_points"] == 12 * 32

    # clock offset: header.stamp - log_time, on every message
    offset = faults["clock_offset"]["offset_ns"]
    assert offset == 2_500_000_000
    assert {m.stamp_ns - m.log_ns for msgs in rec.topics.values() for m in msgs} == {offset}


@pytest.mark.parametrize("fmt", ["mcap", "bag"])
def test_quarantine_faults_damage_the_file_as_told(tmp_path, fmt):
    robot = RobotIdentity("robot-009", "warehouse_amr", "us-east")

    def run(kind: str | None) -> tuple[dict, Path]:
        d = tmp_path / (kind or "clean")
        d.mkdir()
        truth = simulate_recording(d, robot, START_NS, 6.0, 3, fmt, [kind] if kind else [])
        return truth, d / truth["file"]

    clean_truth, clean_path = run(None)
    original = clean_path.read_bytes()

    truth, path = run("truncated")
    cut = truth["faults"]["truncated"]
    assert cut["original_size"] == len(original)
    assert path.stat().st_size == cut["truncated_size"] == int(len(original) * 0.6)
    assert path.read_bytes() == original[:cut["truncated_size"]]

    truth, path = run("bad_magic")
    data = path.read_bytes()
    assert data[:8] == (b"NOTMCAP!" if fmt == "mcap" else b"NOTABAG!")
    assert data[:8] == truth["faults"]["bad_magic"]["magic_written"].encode()
    assert data[8:] == original[8:]

    truth, path = run("no_identity")
    assert not Path(f"{path}.meta.json").exists() and truth["sidecar"] is None
    if fmt == "mcap":
        assert read_recording(path, fmt).metadata == {}
    else:
        assert path.read_bytes() == original  # a bag carries its identity only in the sidecar

    truth, path = run("future_timestamps")
    fut = truth["faults"]["future_timestamps"]
    rec = read_recording(path, fmt)
    shifted = [m for msgs in rec.topics.values() for m in msgs if m.log_ns > START_NS + 86400e9]
    assert len(shifted) == fut["count"] == sum(fut["per_topic"].values()) > 0
    # the last 5 s moved by exactly 400 days, header stamps with them
    assert all(m.log_ns - fut["shift_ns"] >= START_NS + 1_000_000_000 for m in shifted)
    assert all(m.stamp_ns == m.log_ns for msgs in rec.topics.values() for m in msgs)
    assert fut["shift_ns"] == 400 * 86400 * 10**9
    assert len(rec.topics["/imu"]) == 600 and fut["per_topic"]["/imu"] == 500
    assert truth["end_ns"] == max(m.log_ns for m in shifted)

    for kind in ("truncated", "bad_magic", "no_identity", "future_timestamps"):
        assert run_status(tmp_path, fmt, kind) == "quarantined"
    assert clean_truth["expected_raw_status"] == "accepted"


def run_status(tmp_path: Path, fmt: str, kind: str) -> str:
    truth = simulate_recording(tmp_path / f"status-{kind}.{fmt}",
                               RobotIdentity("r", "delivery", "eu-west"), START_NS, 1.0, 1, fmt,
                               [kind])
    assert truth["quarantine_faults"] == [kind]
    return truth["expected_raw_status"]


def test_faults_leave_the_clean_signal_alone(clean, tmp_path):
    truth = simulate_recording(tmp_path, ROBOT, START_NS, 10.05, 7, "mcap", ["imu_spikes"])
    rec = read_recording(tmp_path / truth["file"], "mcap")
    _, clean_rec, _ = clean["mcap"]
    spiked = set(truth["faults"]["imu_spikes"]["log_times_ns"])
    same = [a.raw == b.raw for a, b in zip(rec.topics["/imu"], clean_rec.topics["/imu"],
                                           strict=True) if a.log_ns not in spiked]
    assert all(same) and len(same) == 1005 - len(spiked)
    for topic in ("/gps/fix", "/lidar/points", "/camera/front/image/compressed"):
        assert [m.raw for m in rec.topics[topic]] == [m.raw for m in clean_rec.topics[topic]]


# --------------------------------------------------------------------------- fleet


def test_fleet_layout_identity_and_fault_assignment(tmp_path):
    truth = simulate_fleet(tmp_path, robots=4, date="2026-03-02", minutes=0.1, seed=5,
                           faults=["imu_spikes", "gps_dropouts", "black_frames:0", "truncated"])
    assert json.loads((tmp_path / "ground_truth.json").read_text()) == truth
    assert truth["seed"] == 5 and truth["date"] == "2026-03-02"
    recs = truth["recordings"]
    assert [r["identity"]["robot_id"] for r in recs] == [f"robot-00{i}" for i in range(4)]
    assert len({r["identity"]["robot_type"] for r in recs}) == 2
    assert {r["identity"]["robot_type"] for r in recs} <= set(ROBOT_TYPES)
    assert [r["identity"]["region"] for r in recs][:3] == list(REGIONS)
    eight = int(datetime(2026, 3, 2, 8, tzinfo=UTC).timestamp()) * 10**9
    assert [r["start_ns"] for r in recs] == [eight + i * 420 * 10**9 for i in range(4)]
    assert [r["file"] for r in recs] == [
        "robot-000_20260302T080000.mcap", "robot-001_20260302T080700.mcap",
        "robot-002_20260302T081400.mcap", "robot-003_20260302T082100.mcap"]
    # bare faults go round-robin from the last robot backwards
    assert [list(r["faults"]) for r in recs] == [
        ["black_frames"], ["truncated"], ["gps_dropouts"], ["imu_spikes"]]
    assert [r["expected_raw_status"] for r in recs] == [
        "accepted", "quarantined", "accepted", "accepted"]
    for r in recs:
        path = tmp_path / r["file"]
        assert path.stat().st_size == r["size_bytes"] and sha256(path) == r["sha256"]
        assert r["topics"]["/imu"]["nominal_count"] == 600
        assert r["date"] == "2026-03-02"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [r["file"] for r in recs] + ["ground_truth.json"])


def test_fleet_bags_get_sidecars(tmp_path):
    truth = simulate_fleet(tmp_path, robots=3, date="2026-03-03", minutes=0.02, seed=1,
                           fmt="bag", faults=["no_identity:1"])
    recs = truth["recordings"]
    assert [r["file"].endswith(".bag") for r in recs] == [True] * 3
    assert [(tmp_path / f"{r['file']}.meta.json").exists() for r in recs] == [True, False, True]
    assert json.loads((tmp_path / f"{recs[2]['file']}.meta.json").read_text()) == {
        "robot_id": "robot-002", "robot_type": "delivery", "region": "ap-south"}
    assert recs[1]["expected_raw_status"] == "quarantined"


def test_fault_assignment_rules_and_errors():
    assert assign_faults(3, ["imu_spikes", "black_frames", "gps_dropouts", "truncated"]) == [
        ["gps_dropouts"], ["black_frames"], ["imu_spikes", "truncated"]]
    assert assign_faults(2, ["bad_magic:0", "clock_offset"]) == [["bad_magic"], ["clock_offset"]]
    assert assign_faults(2, "imu_spikes,black_frames:1") == [[], ["imu_spikes", "black_frames"]]
    assert set(FAULT_KINDS) == {
        "duplicate_messages", "lidar_far_returns", "imu_spikes", "gps_dropouts", "black_frames",
        "truncated", "bad_magic", "no_identity", "future_timestamps", "clock_offset"}
    with pytest.raises(ValueError, match="unknown fault 'lightning'"):
        assign_faults(2, ["lightning"])
    with pytest.raises(ValueError, match="outside 0..1"):
        assign_faults(2, ["imu_spikes:2"])
    with pytest.raises(ValueError, match="not an integer"):
        assign_faults(2, ["imu_spikes:x"])
    with pytest.raises(ValueError, match="unknown region"):
        simulate_recording(Path("unused.mcap"), RobotIdentity("r", "delivery", "mars"),
                           START_NS, 1.0, 1)
    with pytest.raises(ValueError, match="expected YYYY-MM-DD"):
        simulate_fleet(Path("unused"), 1, "02/03/2026", 1.0, 1)


def test_simulator_never_imports_dagster():
    code = "import sys, robolake.simulate; print('dagster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
