"""The raw layer on the real recordings in ../shared/data, on a folder and on S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3

from robolake import raw
from robolake.storage import open_store
from robolake.tables import open_table, read_table
from tests.conftest import land

HUSKY = {"robot_id": "husky-01", "robot_type": "husky", "region": "us-east"}
SICK = {"robot_id": "sick-01", "robot_type": "lidar_rig", "region": "eu-west"}
DRONE = {"robot_id": "vtol-01", "robot_type": "drone", "region": "eu-west"}


def _ingest_all(landing, lake) -> dict[tuple[str, str], raw.IngestResult]:
    return raw.ingest_landing(landing, lake)


def _rows(lake) -> dict[str, dict]:
    return {r["file_name"]: r for r in read_table(lake, raw.RAW_UPLOADS).to_pylist()}


def test_real_recordings_ingest_with_sidecars(shared_data: Path, dirs):
    landing_dir, lake_dir = dirs
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY)
    land(landing_dir, shared_data / "robot_localization_test1_husky.bag", HUSKY)
    land(landing_dir, shared_data / "sick_rms1000_lms1000_movement_off.bag", SICK)
    land(landing_dir, shared_data / "pyulog_sample_log_small_cubeorange.ulg", DRONE)
    landing, lake = open_store(landing_dir), open_store(lake_dir)

    results = _ingest_all(landing, lake)
    assert set(results) == {("2015-05-21", "husky"), ("2022-09-23", "lidar_rig"),
                            ("2021-04-21", "drone")}
    rows = _rows(lake)
    mcap, bag = rows["husky_ros2_converted.mcap"], rows["robot_localization_test1_husky.bag"]
    # the MCAP is the bag converted (rosbags-convert): the same messages, so the second one
    # indexed (by landing key order, the bag) is a duplicate of the first, naming it
    # rosbags-convert writes no CRCs: usable, flagged as not verifiable
    assert mcap["status"] == "flagged" and mcap["quality_score"] == 90.0
    assert mcap["reasons"] == [
        "husky_ros2_converted.mcap: integrity not verifiable: 8 of 8 chunks carry no CRC and "
        "the data section has none (written without checksums, as rosbags-convert does); "
        "flipped bits would go unnoticed"]
    assert bag["status"] == "duplicate" and bag["quality_score"] == 100.0
    assert bag["reasons"] == [
        f"robot_localization_test1_husky.bag: the same messages as upload "
        f"{mcap['upload_id'][:12]} (husky_ros2_converted.mcap): same topics, counts and time "
        "range and identical sensor values (a re-export or format conversion); indexed, not "
        "cleaned again"]
    assert bag["raw_key"].endswith(f"{bag['upload_id']}.bag")  # its own bytes are kept
    for row in (mcap, bag):
        assert (row["robot_id"], row["region"], row["identity_source"]) == (
            "husky-01", "us-east", "sidecar")
        assert row["message_count"] == 16806
        assert row["start_ns"] == 1432235498025043042
        assert {t["topic"]: t["count"] for t in row["topics"]}["/imu/data"] == 11865
    assert mcap["format"] == "mcap" and bag["format"] == "bag"
    assert mcap["upload_id"] != bag["upload_id"]
    # content-addressed copy, byte for byte
    assert mcap["raw_key"] == (f"raw/files/date=2015-05-21/robot_type=husky/region=us-east/"
                               f"{mcap['upload_id']}.mcap")
    assert (lake_dir / mcap["raw_key"]).read_bytes() == (
        shared_data / "husky_ros2_converted.mcap").read_bytes()

    sick = rows["sick_rms1000_lms1000_movement_off.bag"]
    assert sick["status"] == "accepted"
    sensors = {t["topic"]: t["sensor"] for t in sick["topics"]}
    assert sensors["/sick_lms_1xx/scan"] == "lidar" and sensors["/radar"] is None

    # ULog: indexed with absolute time, flagged: no checksums, no ROS sensor topic to decode
    ulog = rows["pyulog_sample_log_small_cubeorange.ulg"]
    assert ulog["status"] == "flagged" and ulog["quality_score"] == 75.0
    assert ulog["reasons"][0] == (
        "pyulog_sample_log_small_cubeorange.ulg: integrity not verifiable: PX4 ULog carries no "
        "checksums; flipped bits would go unnoticed")
    assert ulog["reasons"][1].startswith(
        "pyulog_sample_log_small_cubeorange.ulg: no decoder for px4/")
    assert ulog["reasons"][1].endswith("indexed only")
    assert ulog["date"] == "2021-04-21"


def test_reingest_is_idempotent_and_same_bytes_elsewhere_is_a_duplicate(shared_data, dirs):
    landing_dir, lake_dir = dirs
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY)
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    first = raw.ingest_partition(landing, lake, "2015-05-21", "husky")
    assert first.counts["flagged"] == 1  # no CRCs (see above)
    version = open_table(lake, raw.RAW_UPLOADS).version()

    again = raw.ingest_partition(landing, lake, "2015-05-21", "husky")
    assert (again.new_rows, again.skipped) == ([], 1)
    # the same bytes landed again (new mtime): recognised by content, still nothing new
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY)
    assert raw.ingest_partition(landing, lake, "2015-05-21", "husky").new_rows == []
    assert open_table(lake, raw.RAW_UPLOADS).version() == version

    # the same bytes under another name: indexed as a duplicate pointing at the first copy
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY, name="copy/again.mcap")
    dup = raw.ingest_partition(landing, lake, "2015-05-21", "husky")
    assert [r["status"] for r in dup.new_rows] == ["duplicate"]
    assert dup.new_rows[0]["raw_key"] == first.new_rows[0]["raw_key"]
    assert read_table(lake, raw.RAW_UPLOADS).num_rows == 2


def test_bad_files_are_quarantined_with_actionable_reasons(shared_data: Path, dirs):
    landing_dir, lake_dir = dirs
    mcap = (shared_data / "husky_ros2_converted.mcap").read_bytes()
    (landing_dir / "magic.mcap").write_bytes(b"NOTMCAP!" + mcap[8:])
    (landing_dir / "cut.mcap").write_bytes(mcap[: len(mcap) * 6 // 10])
    (landing_dir / "cut.mcap.meta.json").write_text(json.dumps(HUSKY))
    land(landing_dir, shared_data / "robot_localization_test1_husky.bag")  # no identity
    land(landing_dir, shared_data / "sick_rms1000_lms1000_movement_off.bag",
         {"robot_id": "x", "robot_type": "Lidar Rig", "region": "eu-west"})
    land(landing_dir, shared_data / "pyulog_sample_log_small_cubeorange.ulg", DRONE)
    (landing_dir / "pyulog_sample_log_small_cubeorange.ulg.meta.json").write_text("{robot")
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    _ingest_all(landing, lake)
    rows = _rows(lake)
    assert {n: r["status"] for n, r in rows.items()} == {
        "magic.mcap": "quarantined", "cut.mcap": "quarantined",
        "robot_localization_test1_husky.bag": "quarantined",
        "sick_rms1000_lms1000_movement_off.bag": "quarantined",
        "pyulog_sample_log_small_cubeorange.ulg": "quarantined"}
    reasons = {n: r["reasons"][0] for n, r in rows.items()}
    assert reasons["magic.mcap"].startswith("magic.mcap: unknown format: first bytes b'NOTMCAP!'")
    assert reasons["cut.mcap"].startswith("cut.mcap: truncated")
    assert "no robot identity" in reasons["robot_localization_test1_husky.bag"]
    assert "robot_type='Lidar Rig'" in reasons["sick_rms1000_lms1000_movement_off.bag"]
    assert "not valid JSON" in reasons["pyulog_sample_log_small_cubeorange.ulg"]
    # unidentified files wait in the arrival-date partition, truncated ones in their own
    assert rows["magic.mcap"]["robot_type"] == raw.UNIDENTIFIED
    assert (rows["cut.mcap"]["date"], rows["cut.mcap"]["robot_type"]) == ("2015-05-21", "husky")
    for r in rows.values():
        assert r["quality_score"] == 0.0
        assert r["raw_key"].startswith("raw/quarantine/")
        note = json.loads((lake_dir / (r["raw_key"] + ".reasons.json")).read_text())
        assert note["reasons"] == r["reasons"]


def test_sidecar_arriving_later_moves_file_to_its_partition(shared_data: Path, dirs):
    landing_dir, lake_dir = dirs
    land(landing_dir, shared_data / "robot_localization_test1_husky.bag")
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    [only] = _ingest_all(landing, lake).values()
    assert only.counts["quarantined"] == 1 and only.robot_type == raw.UNIDENTIFIED
    (landing_dir / "robot_localization_test1_husky.bag.meta.json").write_text(json.dumps(HUSKY))
    results = _ingest_all(landing, lake)
    assert results[("2015-05-21", "husky")].counts["accepted"] == 1
    # the quarantine record is history and stays
    assert sorted(r["status"] for r in _rows_list(lake)) == ["accepted", "quarantined"]


def _rows_list(lake):
    return read_table(lake, raw.RAW_UPLOADS).to_pylist()


def test_s3_landing_and_lake(shared_data: Path, s3_endpoint, monkeypatch):
    for k, v in s3_endpoint.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"], region_name="us-east-1")
    s3.create_bucket(Bucket="fleet-uploads")
    s3.create_bucket(Bucket="lake")
    # identity as upload metadata (x-amz-meta-*), no sidecar
    s3.upload_file(str(shared_data / "husky_ros2_converted.mcap"), "fleet-uploads",
                   "incoming/husky.mcap", ExtraArgs={"Metadata": {
                       "robot-id": "husky-01", "robot-type": "husky", "region": "us-east"}})
    s3.upload_file(str(shared_data / "sick_rms1000_lms1000_movement_off.bag"), "fleet-uploads",
                   "incoming/sick.bag")
    s3.put_object(Bucket="fleet-uploads", Key="incoming/sick.bag.meta.json",
                  Body=json.dumps(SICK).encode())
    landing, lake = open_store("s3://fleet-uploads/incoming"), open_store("s3://lake/robolake")
    results = _ingest_all(landing, lake)
    assert {p: r.counts["accepted"] + r.counts["flagged"] for p, r in results.items()} == {
        ("2015-05-21", "husky"): 1, ("2022-09-23", "lidar_rig"): 1}
    rows = {r["file_name"]: r for r in _rows_list(lake)}
    assert rows["husky.mcap"]["identity_source"] == "upload_metadata"
    assert rows["sick.bag"]["identity_source"] == "sidecar"
    copied = s3.get_object(Bucket="lake", Key="robolake/" + rows["husky.mcap"]["raw_key"])
    assert copied["Body"].read() == (shared_data / "husky_ros2_converted.mcap").read_bytes()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="robolake/raw/uploads/")
            ["Contents"]}
    assert any(k.endswith(".json") and "_delta_log" in k for k in keys)
    # idempotent on S3 too
    assert all(not r.new_rows for r in _ingest_all(landing, lake).values())
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(_rows_list(lake))
