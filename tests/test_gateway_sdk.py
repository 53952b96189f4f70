"""The SDK against the gateway under uvicorn: parallel multipart uploads with per-part
checksums, resuming after a crashed process, and a stream that rides out rate limits and a
broker outage to arrive, once, as MCAP readings equal to what was sent."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import require_service
from gateway_fixtures import NatsServer, make_settings, nats_server_binary, start_gateway
from test_gateway_stream import _stop, _wait_settled, _writer, stream_messages

from robolake import cleaned, raw
from robolake.decode import decode_recording
from robolake.sdk import DataUploader, UploadFailed
from robolake.simulate import simulate_recording
from robolake.simulate.robots import RobotIdentity
from robolake.storage import open_store
from robolake.tables import read_table

START_NS = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp() * 1e9)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rec")
    truth = simulate_recording(folder, RobotIdentity("sim-0", "delivery", "eu-west"), START_NS,
                               6.0, seed=5, faults=["no_identity"])
    return folder / truth["file"]


@pytest.fixture
def gw(tmp_path):
    running = start_gateway(make_settings(tmp_path))
    yield running
    running.stop()


def test_upload_file_in_parallel_parts_lands_with_the_keys_identity(gw, recording, tmp_path):
    key = gw.key("robot", robot_id="r-sdk", robot_type="quadruped", region="ap-south")
    up = DataUploader(gw.url, key, robot_id="r-sdk", region="ap-south", workers=4,
                      state_dir=tmp_path / "sdk")
    parts = []
    status = up.upload_file(recording, metadata={"mission": "m-1"}, part_size=64 * 1024,
                            on_part=parts.append)
    assert status["status"] == "completed"
    assert sorted(parts) == list(range(1, status["part_count"] + 1)) and len(parts) >= 10
    landed = Path(gw.settings.landing) / status["landing_key"]
    assert landed.read_bytes() == recording.read_bytes()
    assert not list((tmp_path / "sdk").glob("*.json"))  # state removed once complete
    raw.ingest_landing(open_store(gw.settings.landing), open_store(gw.settings.lake))
    again = up.upload_file(recording)  # a new upload of the same bytes
    assert again["upload_id"] != status["upload_id"]
    with gw.client(gw.token(key)) as c:
        verdict = c.get(f"/api/v1/uploads/{status['upload_id']}").json()["verdict"]
    assert (verdict["robot_id"], verdict["robot_type"], verdict["region"]) == (
        "r-sdk", "quadruped", "ap-south")
    assert verdict["content_sha256"] == hashlib.sha256(recording.read_bytes()).hexdigest()
    up.close()


def test_upload_resumes_after_the_uploading_process_died(gw, recording, tmp_path):
    key = gw.key("robot", robot_id="r-crash")
    state = tmp_path / "sdk"
    script = textwrap.dedent(f"""
        import os, sys
        from robolake.sdk import DataUploader
        up = DataUploader({gw.url!r}, {key!r}, robot_id="r-crash", region="eu-west",
                          workers=1, state_dir={str(state)!r})
        done = []
        def crash_after_three(n):
            done.append(n)
            if len(done) == 3:
                os._exit(9)  # the process dies mid-upload
        up.upload_file({str(recording)!r}, part_size=64 * 1024, on_part=crash_after_three)
    """)
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert died.returncode == 9, died.stderr
    assert len(list(state.glob("*.json"))) == 1
    up = DataUploader(gw.url, key, robot_id="r-crash", region="eu-west", state_dir=state)
    resumed = []
    status = up.upload_file(recording, part_size=64 * 1024, on_part=resumed.append)
    assert sorted(resumed) == list(range(4, status["part_count"] + 1))
    landed = Path(gw.settings.landing) / status["landing_key"]
    assert landed.read_bytes() == recording.read_bytes()
    up.close()


def test_uploader_refuses_a_key_of_another_robot(gw, recording, tmp_path):
    key = gw.key("robot", robot_id="r-1", region="eu-west")
    with pytest.raises(UploadFailed, match="belongs to robot 'r-1', not 'r-2'"):
        DataUploader(gw.url, key, "r-2", "eu-west", state_dir=tmp_path).upload_file(recording)
    with pytest.raises(UploadFailed, match="region 'eu-west', not 'us-east'"):
        DataUploader(gw.url, key, "r-1", "us-east", state_dir=tmp_path).upload_file(recording)
    with pytest.raises(UploadFailed, match="401"):
        DataUploader(gw.url, "rlk_nope_nope", "r-1", "eu-west").upload_file(recording)


@pytest.mark.service
def test_upload_file_to_s3_with_presigned_parts(tmp_path, s3_endpoint, monkeypatch):
    import boto3

    for k, v in s3_endpoint.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                      region_name="us-east-1")
    bucket = f"sdk-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    truth = simulate_recording(tmp_path, RobotIdentity("sim-0", "delivery", "eu-west"),
                               START_NS, 8.0, seed=6, faults=["no_identity"],
                               lidar_points=4096, image_size=(320, 240))
    path = tmp_path / truth["file"]
    gw = start_gateway(make_settings(tmp_path, landing=f"s3://{bucket}/in"))
    try:
        key = gw.key("robot", robot_id="r-s3")
        up = DataUploader(gw.url, key, "r-s3", "eu-west", state_dir=tmp_path / "sdk")
        status = up.upload_file(path, part_size=5 * 1024**2)
        obj = s3.get_object(Bucket=bucket, Key=f"in/{status['landing_key']}")
        assert obj["Body"].read() == path.read_bytes()
        assert obj["Metadata"]["robot-id"] == "r-s3"
        up.close()
    finally:
        gw.stop()


def test_stream_rides_out_rate_limits_and_a_broker_outage(tmp_path):
    require_service(nats_server_binary() is not None, "nats-server binary not installed")
    nats = NatsServer(tmp_path / "nats").start()
    gw = start_gateway(make_settings(tmp_path, broker_url=nats.url, robot_rate=4))
    try:
        key = gw.key("robot", robot_id="r-st", robot_type="delivery", region="eu-west")
        up = DataUploader(gw.url, key, "r-st", "eu-west", backoff_s=0.2, max_retries=8)
        sent = [{"sensor": "imu", "ts_ns": START_NS + i * 10**7, "ax": 0.001 * i, "ay": 0.5,
                 "az": 9.8, "gx": 0.0, "gy": -0.001 * i, "gz": 0.02} for i in range(3000)]

        def outage() -> None:
            time.sleep(1.0)
            nats.stop()
            time.sleep(2.0)
            nats.start()

        cut = threading.Thread(target=outage)
        cut.start()
        with up.stream_upload(batch_size=100, flush_interval=0.2) as s:
            for r in sent:
                s.write(r)
                time.sleep(0.0008)
        cut.join()
        assert s.accepted == 3000 and s.batches_sent >= 30  # also cut every 0.2 s
        stored = stream_messages(nats.url, "eu-west")
        readings = [r for body, _ in stored for r in body["readings"]]
        # at least once: every reading is stored; a batch whose ack was lost may repeat
        assert {r["ts_ns"] for r in readings} == {r["ts_ns"] for r in sent}
        assert len({h["Nats-Msg-Id"] for _, h in stored}) == s.batches_sent
        writer = _writer(tmp_path, nats.url, tmp_path / "landing")
        try:
            _wait_settled(nats.url, "eu-west")
        finally:
            _stop(writer)
        files = sorted((tmp_path / "landing").glob("stream/**/*.mcap"))
        assert len(files) == 1  # 30 s of readings: one window
        got = decode_recording(files[0], "ref", workers=1).imu
        assert got["stamp_ns"].tolist() == [r["ts_ns"] for r in sent]
        for col in ("ax", "ay", "az", "gx", "gy", "gz"):
            assert np.array_equal(got[col], np.array([r[col] for r in sent]))
        # through the raw and cleaned layers: cleaned/imu holds exactly what was sent
        lake = open_store(tmp_path / "lake")
        raw.ingest_landing(open_store(tmp_path / "landing"), lake)
        cleaned.clean_partition(lake, "2026-11-20", "delivery")
        rows = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"])).sort("ts_ns")
        assert rows["robot_id"].unique().to_list() == ["r-st"]
        assert rows["ts_ns"].to_list() == [r["ts_ns"] for r in sent]
        for col in ("ax", "ay", "az", "gx", "gy", "gz"):
            assert rows[col].to_list() == [r[col] for r in sent]
        up.close()
    finally:
        gw.stop()
        nats.stop()


