"""The cleaned layer against the simulator's ground truth and a brute-force reference."""

from __future__ import annotations

import io
import math
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from robolake import cleaned, contract, raw
from robolake.decode import _Deserializer, decode_recording, iter_sensor_messages
from robolake.simulate import RobotIdentity, simulate_fleet, simulate_recording
from robolake.storage import open_store
from robolake.tables import open_table, read_table

ROBOT = RobotIdentity("robot-042", "delivery", "eu-west")


def _upload(raw_key: str = "raw/x.mcap") -> cleaned.Upload:
    return cleaned.Upload("u-1", ROBOT.robot_id, ROBOT.robot_type, ROBOT.region, raw_key,
                          arrived_ns=time.time_ns())


def _start(day: str, hh: int, mm: int, ss: int = 0) -> int:
    return int(datetime.fromisoformat(f"{day}T{hh:02d}:{mm:02d}:{ss:02d}+00:00").timestamp()
               * 1e9)


def reference_alignment(path: Path) -> list[dict]:
    """The contract, message by message with rosbags: slow, obvious, independent."""
    des = _Deserializer()
    imu, gps, cams, lidar = [], [], [], []
    seen = set()
    for topic, msgtype, log_ns, data, enc in iter_sensor_messages(path):
        if (topic, log_ns, data) in seen:  # simulator duplicates: identical bytes and time
            continue
        seen.add((topic, log_ns, data))
        msg = des(data, msgtype, enc)
        t = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if msgtype.endswith("Imu"):
            a, g = msg.linear_acceleration, msg.angular_velocity
            if math.sqrt(a.x ** 2 + a.y ** 2 + a.z ** 2) <= 20.0:
                imu.append((t, a.x, a.y, a.z, g.x, g.y, g.z))
        elif msgtype.endswith("NavSatFix"):
            if msg.status.status >= 0 and not any(map(math.isnan, (msg.latitude, msg.longitude,
                                                                   msg.altitude))):
                gps.append((t, msg.latitude, msg.longitude, msg.altitude))
        elif msgtype.endswith("CompressedImage"):
            if np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert("L")).max() > 16:
                cams.append(t)
        elif msgtype.endswith("PointCloud2"):
            pts = np.frombuffer(bytes(msg.data), dtype="<f4").reshape(-1, 4)
            r = np.sqrt((pts[:, :3].astype(np.float64) ** 2).sum(axis=1))
            lidar.append((t, int(((r > 0) & (r <= 200.0)).sum())))
    rows = []
    for t, kept in sorted(lidar):
        near = min(cams, key=lambda c: (abs(c - t), c)) if cams else None
        cam = near if near is not None and abs(near - t) < 16_000_000 else None
        window = [s for s in imu if t - 50_000_000 <= s[0] < t + 50_000_000]
        means = [sum(s[i] for s in window) / len(window) if window else None for i in range(1, 7)]
        pos = [None] * 3
        fixes = sorted(gps)
        for (t0, *v0), (t1, *v1) in zip(fixes, fixes[1:], strict=False):
            if t0 <= t <= t1:
                w = (t - t0) / (t1 - t0)
                pos = [a + (b - a) * w for a, b in zip(v0, v1, strict=True)]
                break
        rows.append({"ts_ns": t, "camera_ts_ns": cam, "imu": means, "imu_count": len(window),
                     "gps": pos, "lidar_points": kept})
    return rows


def _close(a, b, tol):
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)


@pytest.mark.parametrize("fmt,faults", [
    ("mcap", ()),
    ("bag", ("imu_spikes", "gps_dropouts", "black_frames", "lidar_far_returns",
             "duplicate_messages")),
])
def test_aligned_rows_equal_the_reference(tmp_path: Path, fmt: str, faults):
    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 12.0, seed=3,
                               fmt=fmt, faults=faults, lidar_points=256)
    path = tmp_path / truth["file"]
    result = cleaned.clean_upload(path, _upload(), "2026-11-20")
    got = result.aligned.sort("ts_ns").to_dicts()
    want = reference_alignment(path)
    assert len(got) == len(want) == 120  # 10 Hz for 12 s
    for g, w in zip(got, want, strict=True):
        assert g["ts_ns"] == w["ts_ns"]
        assert g["camera_ts_ns"] == w["camera_ts_ns"]
        if w["camera_ts_ns"] is not None:
            assert g["camera_dt_ms"] == pytest.approx((w["camera_ts_ns"] - w["ts_ns"]) / 1e6)
        assert g["imu_count"] == w["imu_count"]
        for col, ref in zip(("imu_ax", "imu_ay", "imu_az", "imu_gx", "imu_gy", "imu_gz"),
                            w["imu"], strict=True):
            assert _close(g[col], ref, 1e-9), (col, g[col], ref)
        for col, ref in zip(("gps_lat", "gps_lon", "gps_alt"), w["gps"], strict=True):
            assert _close(g[col], ref, 1e-9), (col, g[col], ref)
        assert g["lidar_points"] == w["lidar_points"]
    if not faults:
        # on the rate grid: 10 IMU samples per window (5 at the start), camera every 3rd frame
        assert [r["imu_count"] for r in got[1:]] == [10] * 119
        assert got[0]["imu_count"] == 5
        assert all(abs(r["camera_dt_ms"]) < 1e-3 for r in got)
        assert all(r["lidar_points"] == 256 for r in got)
        assert got[-1]["gps_lat"] is None  # after the last fix: no extrapolation
        assert result.report["null_rate"] < contract.MAX_NULL_RATE


def test_rule_counts_match_the_ground_truth(tmp_path: Path):
    faults = ("duplicate_messages", "lidar_far_returns", "imu_spikes", "gps_dropouts",
              "black_frames")
    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 30.0, seed=11,
                               faults=faults)
    result = cleaned.clean_upload(tmp_path / truth["file"], _upload(), "2026-11-20")
    f, c = truth["faults"], result.counts
    dups = f["duplicate_messages"]["per_topic"]
    assert c["imu_duplicates"] == dups.get("/imu", 0)
    assert c["lidar_duplicates"] == dups.get("/lidar/points", 0)
    assert c["camera_duplicates"] == dups.get("/camera/front/image/compressed", 0)
    assert c["gps_duplicates"] == dups.get("/gps/fix", 0)
    assert c["imu_outliers"] == f["imu_spikes"]["count"] > 0
    assert c["gps_invalid"] == f["gps_dropouts"]["count"] > 0
    assert c["lidar_points_far"] == f["lidar_far_returns"]["total_far_points"] > 0
    assert c["camera_black"] == f["black_frames"]["count"] > 0
    assert c["imu_samples"] == truth["topics"]["/imu"]["count"]
    # black frames are flagged in the index and never matched
    black = set(result.camera.filter(pl.col("is_black"))["ts_ns"].to_list())
    assert len(black) == f["black_frames"]["count"]
    assert not black & set(result.aligned["camera_ts_ns"].drop_nulls().to_list())
    # far returns dropped from the kept counts of exactly the affected frames
    far = f["lidar_far_returns"]
    affected = result.lidar.filter(pl.col("points_far") > 0)
    assert affected["log_ns"].to_list() == far["log_times_ns"]
    assert set(affected["points_kept"]) == {far["expected_kept_points_per_frame"]}
    assert result.lidar["range_max_m"].max() <= 200.0
    # quality: the faulty recording fails the thresholds its faults break
    assert result.report["outlier_rate"] == c["imu_outliers"] / c["imu_samples"]
    passed = cleaned.check_report(result.report)
    assert passed["duplicate_rate"] is False  # ~1 % duplicates against a 0.1 % threshold


def test_clean_recording_passes_quality(tmp_path: Path):
    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 20.0, seed=4)
    result = cleaned.clean_upload(tmp_path / truth["file"], _upload(), "2026-11-20")
    assert cleaned.check_report(result.report) == {
        "null_rate": True, "outlier_rate": True, "max_gap": True, "duplicate_rate": True,
        "latency": True}
    assert result.counts["imu_outliers"] == result.counts["imu_duplicates"] == 0
    assert result.report["max_gap_s"] == pytest.approx(0.1)


def test_constant_clock_offset_is_detected_and_corrected(tmp_path: Path):
    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 10.0, seed=2,
                               faults=("clock_offset",))
    result = cleaned.clean_upload(tmp_path / truth["file"], _upload(), "2026-11-20")
    assert result.report["clock_offset_ns"] == truth["faults"]["clock_offset"]["offset_ns"]
    assert result.report["clock_corrected"] is True
    assert "corrected" in result.report["notes"][0]
    for frame in (result.imu, result.gps, result.lidar, result.camera):
        assert (frame["ts_ns"] == frame["log_ns"]).all()
    assert result.aligned.height == 100 and result.aligned["camera_ts_ns"].null_count() == 0


def _ingest(landing_dir: Path, lake_dir: Path):
    lake = open_store(lake_dir)
    return lake, list(raw.ingest_landing(open_store(landing_dir), lake))


def test_midnight_crossing_and_idempotent_partition_runs(tmp_path: Path):
    landing = tmp_path / "landing"
    landing.mkdir()
    simulate_recording(landing, ROBOT, _start("2026-11-20", 23, 59, 40), 40.0, seed=9)
    simulate_recording(landing, RobotIdentity("robot-043", "delivery", "eu-west"),
                       _start("2026-11-21", 0, 5), 10.0, seed=10)
    lake, parts = _ingest(landing, tmp_path / "lake")
    assert parts == [("2026-11-20", "delivery"), ("2026-11-21", "delivery")]
    first = {p: cleaned.clean_partition(lake, *p) for p in parts}

    aligned = pl.from_arrow(read_table(lake, cleaned.TABLES["aligned"]))
    by_date = dict(aligned.group_by("date").len().iter_rows())
    assert by_date == {"2026-11-20": 200, "2026-11-21": 200 + 100}
    assert (aligned["date"] == aligned.select(cleaned.utc_date_expr())["date"]).all()
    assert first[parts[0]].reports[0]["date"] == "2026-11-20"  # the recording's partition
    # the Delta table is physically partitioned by date / robot_type / region
    assert (tmp_path / "lake/cleaned/aligned_frames/date=2026-11-21/robot_type=delivery/"
            "region=eu-west").is_dir()

    heights = {k: read_table(lake, v).num_rows for k, v in cleaned.TABLES.items()}
    versions = {k: open_table(lake, v).version() for k, v in cleaned.TABLES.items()}
    # a run with nothing new commits nothing and reports the partition as it stands
    idle = cleaned.clean_partition(lake, *parts[0])
    assert idle.uploads == [] and idle.versions == versions
    assert idle.metrics == first[parts[0]].metrics
    # a re-clean (a backfill after a rule change): one commit per table, the same rows
    again = cleaned.clean_partition(lake, *parts[0], reclean=True)
    assert {k: open_table(lake, v).version() for k, v in cleaned.TABLES.items()} == {
        k: v + 1 for k, v in versions.items()}
    assert {k: read_table(lake, v).num_rows for k, v in cleaned.TABLES.items()} == heights
    assert again.frames["aligned"].sort("ts_ns").equals(
        first[parts[0]].frames["aligned"].sort("ts_ns"))
    # re-cleaning keeps the first arrival-to-cleaned latency
    assert again.reports[0]["cleaned_ns"] == first[parts[0]].reports[0]["cleaned_ns"]


def test_a_run_cleans_only_the_uploads_that_arrived_since_the_last(tmp_path: Path):
    landing = tmp_path / "landing"
    simulate_fleet(landing / "a", robots=1, date="2026-11-20", minutes=0.2, seed=1,
                   robot_types=["delivery"])
    lake, [part] = _ingest(landing, tmp_path / "lake")
    # a day without uploads (a raw run found none): the tables exist for later layers
    empty = cleaned.clean_partition(lake, "2026-11-19", "delivery")
    assert empty.uploads == [] and empty.versions == {k: 0 for k in cleaned.TABLES}
    assert all(read_table(lake, key).num_rows == 0 for key in cleaned.TABLES.values())
    [a] = cleaned.clean_partition(lake, *part).uploads
    files_a = {k: set(open_table(lake, v).file_uris()) for k, v in cleaned.TABLES.items()}
    rows_a = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"]))
    # a second upload of the same robot and time arrives (another seed: other values)
    simulate_fleet(landing / "b", robots=1, date="2026-11-20", minutes=0.2, seed=2,
                   robot_types=["delivery"])
    _, parts = _ingest(landing, tmp_path / "lake")
    assert parts == [part]
    second = cleaned.clean_partition(lake, *part)
    [b] = second.uploads
    assert b.upload_id != a.upload_id and [r["upload_id"] for r in second.reports] == [
        b.upload_id]
    assert [r["upload_id"] for r in second.partition_reports] == [a.upload_id, b.upload_id]
    # the first upload was not cleaned again: its files stay, its rows win the overlap
    for kind, key in cleaned.TABLES.items():
        assert files_a[kind] <= set(open_table(lake, key).file_uris()), kind
    imu = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"]))
    assert imu.filter(pl.col("upload_id") == a.upload_id).sort("ts_ns").equals(
        rows_a.sort("ts_ns"))
    assert second.reports[0]["imu_overlap"] == rows_a.height > 0
    assert imu.filter(pl.col("upload_id") == b.upload_id).is_empty()
    assert second.metrics["uploads"] == 2


def test_recording_without_lidar_says_so(shared_data: Path):
    result = cleaned.clean_upload(shared_data / "husky_ros2_converted.mcap", _upload(),
                                  "2015-05-21")
    assert result.aligned.height == 0
    assert result.report["notes"][-1] == "no LiDAR: no aligned frames"


def test_real_recordings_decode(shared_data: Path):
    for name in ("husky_ros2_converted.mcap", "robot_localization_test1_husky.bag"):
        decoded = decode_recording(shared_data / name, "ref")
        assert len(decoded.imu["ax"]) == 11865 and len(decoded.gps["lat"]) == 989
        assert np.nanmean(decoded.gps["lat"]) == pytest.approx(42.3758, abs=0.01)
        assert np.nanmean(decoded.gps["lon"]) == pytest.approx(-71.1474, abs=0.01)
        # column-wise decoding equals rosbags' message-by-message deserialization
        des = _Deserializer()
        i = 0
        for _topic, msgtype, _log_ns, data, enc in iter_sensor_messages(shared_data / name):
            if msgtype.endswith("Imu") and i < 300:
                m = des(data, msgtype, enc)
                assert decoded.imu["ax"][i] == m.linear_acceleration.x
                assert decoded.imu["gz"][i] == m.angular_velocity.z
                assert decoded.imu["qw"][i] == m.orientation.w
                i += 1
        assert i == 300
    sick = cleaned.clean_upload(shared_data / "sick_rms1000_lms1000_movement_off.bag",
                                _upload(), "2022-09-23")
    frames = dict(sick.aligned.group_by("lidar_topic").len().iter_rows())
    assert frames["/sick_lms_1xx/scan"] == 89 and frames["/cloud"] == 89
    scan = sick.lidar.filter(pl.col("topic") == "/sick_lms_1xx/scan")
    assert (scan["points_total"] == 541).all()
    assert (scan["points_kept"] <= 541).all() and scan["points_kept"].min() > 400


def test_fleet_partition_through_clean(tmp_path: Path):
    simulate_fleet(tmp_path / "landing", robots=3, date="2026-11-20", minutes=0.2, seed=1,
                   faults=["imu_spikes:2"])
    lake, parts = _ingest(tmp_path / "landing", tmp_path / "lake")
    results = [cleaned.clean_partition(lake, *p) for p in parts]
    metrics = {r.robot_type: r.metrics for r in results}
    assert metrics["delivery"]["uploads"] == 2 and metrics["warehouse_amr"]["uploads"] == 1
    assert metrics["delivery"]["outlier_rate"] > 0.0
    assert metrics["warehouse_amr"]["outlier_rate"] == 0.0


def test_uploads_cleaned_one_per_worker_process_equal_one_process(tmp_path: Path,
                                                                   monkeypatch):
    """The local engine on two cores (one upload per warm worker process) writes the same
    tables and reports as on one; the same lake cleaned twice, from two copies."""
    import shutil

    from robolake import workers
    from robolake.settings import reset_settings

    simulate_fleet(tmp_path / "landing", robots=4, date="2026-11-20", minutes=0.2, seed=3,
                   robot_types=["delivery"], faults=["imu_spikes:2", "black_frames"])
    lake, [part] = _ingest(tmp_path / "landing", tmp_path / "lake")
    shutil.copytree(tmp_path / "lake", tmp_path / "lake2")
    out = {}
    for n, folder in ((1, "lake"), (2, "lake2")):
        monkeypatch.setenv("ROBOLAKE_DECODE_WORKERS", str(n))
        reset_settings()
        result = cleaned.clean_partition(open_store(tmp_path / folder), *part)
        assert len(result.uploads) == 4
        out[n] = {}
        for kind, key in cleaned.TABLES.items():
            frame = pl.from_arrow(read_table(open_store(tmp_path / folder), key))
            frame = frame.drop("cleaned_ns", "latency_s", strict=False)
            out[n][kind] = frame.sort([c for c, t in frame.schema.items() if not t.is_nested()])
    reset_settings()
    assert workers._POOLS[2]._processes  # the second run's uploads went to two workers
    for kind, frame in out[1].items():
        assert frame.height > 0, kind
        assert frame.equals(out[2][kind]), kind


def test_great_expectations_suites_catch_contract_violations(tmp_path: Path):
    from robolake.expectations import validate

    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 5.0, seed=4)
    result = cleaned.clean_upload(tmp_path / truth["file"], _upload(), "2026-11-20")
    assert validate("cleaned_aligned_frames", result.aligned).success
    bad = result.aligned.with_columns(pl.lit(20.0).alias("camera_dt_ms"))
    outcome = validate("cleaned_aligned_frames", bad)
    assert not outcome.success
    assert outcome.failed == [
        f"expect_column_values_to_be_between(camera_dt_ms): {bad.height} unexpected"]
    spiky = result.imu.with_columns(pl.lit(35.0).alias("az"))
    assert validate("cleaned_imu", spiky).failed == [
        f"expect_column_values_to_be_between(az): {spiky.height} unexpected"]


def _same_columns(serial, other) -> None:
    for kind in ("imu", "gps", "lidar", "camera"):
        a, b = getattr(serial, kind), getattr(other, kind)
        assert a.keys() == b.keys() and len(a["log_ns"]) == len(b["log_ns"]) > 0
        for col in a:
            if a[col].dtype.kind == "f":
                assert np.array_equal(a[col], b[col], equal_nan=True), (kind, col)
            else:
                assert np.array_equal(a[col], b[col]), (kind, col)


@pytest.mark.parametrize("fmt", ["mcap", "bag"])
def test_parallel_decoding_equals_serial(tmp_path: Path, monkeypatch, fmt: str):
    """Chunk-range workers and small batches (what bounds a worker's memory) change nothing."""
    import robolake.decode as decode

    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 6.0, seed=8,
                               fmt=fmt, faults=("duplicate_messages", "black_frames"))
    path = tmp_path / truth["file"]
    serial = decode.decode_recording(path, "ref", workers=1)
    monkeypatch.setattr(decode, "FIXED_BATCH", 7)
    monkeypatch.setattr(decode._CameraColumns, "BATCH", 5)
    monkeypatch.setattr(decode._CameraColumns, "PENDING_BYTES", 3000)
    monkeypatch.setattr(decode, "CLOUD_BATCH", 3)
    _same_columns(serial, decode.decode_recording(path, "ref", workers=1))
    monkeypatch.setattr(decode, "PARALLEL_MIN_MESSAGES", 1)
    _same_columns(serial, decode.decode_recording(path, "ref", workers=2))


def test_warm_decode_workers_follow_the_settings_and_are_replaced_when_killed(
        tmp_path: Path, monkeypatch):
    """The decode workers stay up between recordings: each slice still runs under the
    caller's ROBOLAKE_* settings of that moment (brightness on, off, on), and a worker
    killed between two recordings is replaced, not reported as a decode failure."""
    import os
    import signal

    import robolake.decode as decode
    from robolake import workers
    from robolake.settings import reset_settings

    truth = simulate_recording(tmp_path, ROBOT, _start("2026-11-20", 9, 0), 6.0, seed=8)
    path = tmp_path / truth["file"]
    monkeypatch.setattr(decode, "PARALLEL_MIN_MESSAGES", 1)
    for switch in ("on", "off", "on"):
        monkeypatch.setenv("ROBOLAKE_CAMERA_BRIGHTNESS", switch)
        reset_settings()
        brightness = decode.decode_recording(path, "ref", workers=2).camera["brightness"]
        nulls = np.array([b is None for b in brightness])
        assert nulls.all() if switch == "off" else not nulls.any(), switch
    reset_settings()
    pool = workers.warm_pool(2)
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):  # the pool notices its dead worker
        if pool._broken:
            break
        time.sleep(0.1)
    again = decode.decode_recording(path, "ref", workers=2)
    assert workers.warm_pool(2) is not pool
    _same_columns(decode.decode_recording(path, "ref", workers=1), again)


def _uses_warm_workers() -> None:
    from robolake import workers

    assert workers.run_all(2, abs, [(-1,), (-2,), (-3,)]) == [1, 2, 3]
    time.sleep(1)  # every worker up and idle
    assert workers.run_all(2, abs, [(-4,), (-5,)]) == [4, 5]


def test_a_process_started_by_multiprocessing_ends_after_using_warm_workers():
    """A Dagster step in the multiprocess executor is a multiprocessing child: when it ends it
    waits for its child processes, so its warm worker pool must stop first, or it hangs."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_uses_warm_workers)
    child.start()
    child.join(60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0


def test_usable_cpus_follow_the_container_cpu_limit(tmp_path: Path):
    """A container's CPU limit (cgroup v2 cpu.max) caps the processes, not the node's CPUs."""
    import os

    from robolake.workers import usable_cpus

    mine = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    for text, expected in (("max 100000", mine), ("150000 100000", 1), ("50000 100000", 1),
                           (f"{(mine + 3) * 100000} 100000", mine), ("garbage", mine)):
        cpu_max.write_text(text + "\n")
        assert usable_cpus(cpu_max) == expected, text
    assert usable_cpus(tmp_path / "absent") == mine


def test_concurrent_runs_on_different_partitions(tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    simulate_fleet(tmp_path / "landing", robots=4, date="2026-11-20", minutes=0.15, seed=1)
    simulate_fleet(tmp_path / "landing" / "next-day", robots=2, date="2026-11-21",
                   minutes=0.15, seed=2)
    landing, lake = open_store(tmp_path / "landing"), open_store(tmp_path / "lake")
    parts = sorted({a.partition for a in
                    raw.assign_partitions(landing, lake, raw.list_landing(landing))})
    assert len(parts) == 4
    with ThreadPoolExecutor(4) as pool:  # all four commit to the same Delta tables at once
        ingested = list(pool.map(lambda p: raw.ingest_partition(landing, lake, *p), parts))
        results = list(pool.map(lambda p: cleaned.clean_partition(lake, *p), parts))
    assert [r.counts["accepted"] for r in ingested] == [2, 2, 1, 1]
    assert [r.frames["aligned"].height for r in results] == [180, 180, 90, 90]
    assert read_table(lake, raw.RAW_UPLOADS).num_rows == 6
    assert read_table(lake, cleaned.TABLES["aligned"]).num_rows == 540
    assert read_table(lake, cleaned.TABLES["report"]).num_rows == 6
