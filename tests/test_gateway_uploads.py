"""Presigned multipart uploads through the gateway (uvicorn on 127.0.0.1): the local landing
folder with the gateway's own signed part URLs, and S3 (moto server) with presigned
UploadPart URLs; both end in a raw row carrying the token's identity."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from gateway_fixtures import make_settings, start_gateway

from robolake import raw
from robolake.simulate import simulate_recording
from robolake.simulate.robots import RobotIdentity
from robolake.storage import open_store

# the recording claims nothing itself: its identity must come from the token
UNNAMED = RobotIdentity("sim-0", "delivery", "eu-west")
START_NS = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp() * 1e9)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rec")
    truth = simulate_recording(folder, UNNAMED, START_NS, 6.0, seed=5, faults=["no_identity"])
    return folder / truth["file"]


@pytest.fixture
def gw(tmp_path):
    running = start_gateway(make_settings(tmp_path))
    yield running
    running.stop()


def _put_parts(created: dict, data: bytes) -> list[dict]:
    parts = []
    size = created["part_size_bytes"]
    for p in created["parts"]:
        n = p["part_number"]
        chunk = data[(n - 1) * size: n * size]
        assert len(chunk) == p["size_bytes"]
        md5 = base64.b64encode(hashlib.md5(chunk).digest()).decode()
        r = httpx.put(p["url"], content=chunk, headers={"Content-MD5": md5}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["etag"].strip('"') == hashlib.md5(chunk).hexdigest()
        parts.append({"part_number": n, "etag": r.headers["etag"]})
    return parts


def test_local_upload_lands_with_the_tokens_identity_and_gets_the_raw_verdict(gw, recording):
    data = recording.read_bytes()
    token = gw.token(gw.key("robot", robot_id="r-42", robot_type="delivery", region="eu-west"))
    with gw.client(token) as c:
        r = c.post("/api/v1/uploads", json={"file_name": recording.name, "size_bytes": len(data),
                                            "part_size_bytes": 256 * 1024,
                                            "metadata": {"mission": "m-7"}})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["backend"] == "local"
        assert created["part_count"] == -(-len(data) // (256 * 1024)) >= 2
        parts = _put_parts(created, data)
        status = c.get(f"/api/v1/uploads/{created['upload_id']}").json()
        assert status["status"] == "uploading"
        assert [p["part_number"] for p in status["parts_uploaded"]] == list(
            range(1, created["part_count"] + 1))
        done = c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                      json={"parts": parts})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "completed" and done.json()["verdict"] is None

    landing = Path(gw.settings.landing)
    landed = landing / created["landing_key"]
    assert landed.read_bytes() == data
    sidecar = json.loads(Path(f"{landed}.meta.json").read_text())
    assert sidecar == {"robot_id": "r-42", "robot_type": "delivery", "region": "eu-west"}
    assert not list((landing / ".gateway-staging").glob("*/.part-*"))

    raw.ingest_landing(open_store(landing), open_store(gw.settings.lake))
    with gw.client(token) as c:
        status = c.get(f"/api/v1/uploads/{created['upload_id']}").json()
    assert status["status"] == "indexed"
    verdict = status["verdict"]
    assert verdict["content_sha256"] == hashlib.sha256(data).hexdigest()
    assert (verdict["robot_id"], verdict["robot_type"], verdict["region"],
            verdict["identity_source"]) == ("r-42", "delivery", "eu-west", "sidecar")
    assert verdict["status"] in ("accepted", "flagged") and verdict["date"] == "2026-11-20"


def test_part_urls_refuse_tampering_expiry_replay_and_wrong_sizes(tmp_path, recording):
    gw = start_gateway(make_settings(tmp_path, part_url_ttl_s=2))
    try:
        data = recording.read_bytes()[: 3 * 64 * 1024 + 10]
        token = gw.token(gw.key("robot"))
        with gw.client(token) as c:
            created = c.post("/api/v1/uploads", json={
                "file_name": "x.mcap", "size_bytes": len(data),
                "part_size_bytes": 64 * 1024}).json()
            url = created["parts"][0]["url"]
            chunk = data[: 64 * 1024]
            tampered = url.replace("/parts/1?", "/parts/2?")
            r = httpx.put(tampered, content=chunk)
            assert r.status_code == 403 and "signature" in r.json()["detail"]
            r = httpx.put(url, content=chunk[:-1])
            assert r.status_code == 422 and "expected 65536" in r.json()["detail"]
            r = httpx.put(url, content=chunk + b"x")
            assert r.status_code == 413
            bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
            r = httpx.put(url, content=chunk, headers={"Content-MD5": bad_md5})
            assert r.status_code == 400 and "BadDigest" in r.json()["detail"]
            # completing before every part arrived names the missing part
            r = c.post(f"/api/v1/uploads/{created['upload_id']}/complete", json={"parts": [
                {"part_number": n, "etag": "0" * 32} for n in range(1, 5)]})
            assert r.status_code == 422 and "part 1 was never uploaded" in r.json()["detail"]
            time.sleep(2.2)
            r = httpx.put(url, content=chunk)
            assert r.status_code == 403 and "expired" in r.json()["detail"]
            # fresh URLs resume the upload
            fresh = c.post(f"/api/v1/uploads/{created['upload_id']}/urls",
                           json={"part_numbers": [1, 2, 3, 4]}).json()
            created["parts"] = fresh
            parts = _put_parts(created, data)
            wrong = [dict(p) for p in parts]
            wrong[1]["etag"] = "0" * 32
            r = c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                       json={"parts": wrong})
            assert r.status_code == 422 and "part 2's ETag" in r.json()["detail"]
            ok = c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                        json={"parts": parts})
            assert ok.status_code == 200
            # a retried complete is answered the same; a replayed part URL is refused
            again = c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                           json={"parts": parts})
            assert again.json()["landing_key"] == ok.json()["landing_key"]
            r = httpx.put(fresh[0]["url"], content=chunk)
            assert r.status_code == 409 and "completed" in r.json()["detail"]
        landed = Path(gw.settings.landing) / ok.json()["landing_key"]
        assert landed.read_bytes() == data
    finally:
        gw.stop()


def test_an_abandoned_upload_is_aborted_and_its_parts_dropped(gw, recording):
    data = recording.read_bytes()
    token = gw.token(gw.key("robot"))
    with gw.client(token) as c:
        created = c.post("/api/v1/uploads", json={"file_name": "gone.mcap",
                                                  "size_bytes": len(data),
                                                  "part_size_bytes": 256 * 1024}).json()
        first = created["parts"][0]
        assert httpx.put(first["url"], content=data[:256 * 1024]).status_code == 200
        staging = Path(gw.settings.landing) / ".gateway-staging" / created["upload_id"]
        assert len(list(staging.glob(".part-*"))) == 1
        r = c.delete(f"/api/v1/uploads/{created['upload_id']}")
        assert r.status_code == 200 and r.json()["status"] == "aborted"
        assert not staging.exists()
        r = httpx.put(created["parts"][1]["url"], content=data[256 * 1024: 512 * 1024])
        assert r.status_code == 409 and "aborted" in r.json()["detail"]
        r = c.post(f"/api/v1/uploads/{created['upload_id']}/urls", json={"part_numbers": [1]})
        assert r.status_code == 409
        r = c.post(f"/api/v1/uploads/{created['upload_id']}/complete", json={"parts": [
            {"part_number": 1, "etag": "x"}]})
        assert r.status_code == 409 and "aborted" in r.json()["detail"]


def test_upload_requests_are_refused_with_reasons(gw):
    robot = gw.token(gw.key("robot", robot_id="r-1"))
    other_robot = gw.token(gw.key("robot", robot_id="r-2"))
    engineer = gw.token(gw.key("engineer"))
    body = {"file_name": "a.mcap", "size_bytes": 10}
    with gw.client(robot) as c:
        cases = [
            ({**body, "robot_id": "r-9"}, ["body", "robot_id"]),
            ({**body, "metadata": {"robot_id": "r-9"}}, ["body", "metadata"]),
            ({**body, "size_bytes": "ten"}, ["body", "size_bytes"]),
            ({**body, "size_bytes": 0}, ["body", "size_bytes"]),
            ({"size_bytes": 10}, ["body", "file_name"]),
        ]
        for payload, loc in cases:
            r = c.post("/api/v1/uploads", json=payload)
            assert r.status_code == 422, payload
            assert [e["loc"] for e in r.json()["detail"]] == [loc], r.json()
        r = c.post("/api/v1/uploads", json={**body, "file_name": "../etc/passwd.mcap"})
        assert r.status_code == 422 and "plain file name" in r.json()["detail"]
        r = c.post("/api/v1/uploads", json={**body, "file_name": "notes.txt"})
        assert r.status_code == 422 and ".mcap, .bag, .ulg" in r.json()["detail"]
        r = c.post("/api/v1/uploads", json={**body, "size_bytes": 200 * 1024**3})
        assert r.status_code == 422
        r = c.post("/api/v1/uploads", content=b"{not json", headers={
            "Content-Type": "application/json"})
        assert r.status_code == 422
        upload_id = c.post("/api/v1/uploads", json=body).json()["upload_id"]
    with gw.client(engineer) as c:
        r = c.post("/api/v1/uploads", json=body)
        assert r.status_code == 403 and "role 'engineer'" in r.json()["detail"]
        assert c.get(f"/api/v1/uploads/{upload_id}").status_code == 200
    with gw.client(other_robot) as c:
        assert c.get(f"/api/v1/uploads/{upload_id}").status_code == 404
        assert c.post(f"/api/v1/uploads/{upload_id}/complete", json={"parts": [
            {"part_number": 1, "etag": "x"}]}).status_code == 404
    with gw.client() as c:
        assert c.post("/api/v1/uploads", json=body).status_code == 401


@pytest.mark.service
def test_s3_upload_presigned_parts_and_identity_metadata(tmp_path, s3_endpoint, recording,
                                                         monkeypatch):
    import boto3

    for k, v in s3_endpoint.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                      region_name="us-east-1")
    bucket = f"landing-{time.time_ns()}"
    s3.create_bucket(Bucket=bucket)
    gw = start_gateway(make_settings(tmp_path, landing=f"s3://{bucket}/in"))
    try:
        # two parts or more: S3 wants 5 MiB for every part but the last
        truth = simulate_recording(tmp_path, UNNAMED, START_NS, 8.0, seed=6,
                                   faults=["no_identity"], lidar_points=4096,
                                   image_size=(320, 240))
        data = (tmp_path / truth["file"]).read_bytes()
        assert len(data) > 5 * 1024**2
        token = gw.token(gw.key("robot", robot_id="r-s3", robot_type="forklift",
                                region="us-east"))
        with gw.client(token) as c:
            created = c.post("/api/v1/uploads", json={
                "file_name": "big.mcap", "size_bytes": len(data),
                "part_size_bytes": 5 * 1024**2}).json()
            assert created["backend"] == "s3" and created["part_count"] >= 2
            url = created["parts"][0]["url"]
            assert url.startswith(s3_endpoint["AWS_ENDPOINT_URL"]) and "X-Amz-Expires=3600" in url
            r = c.post("/api/v1/uploads", json={"file_name": "small-parts.mcap",
                                                "size_bytes": len(data),
                                                "part_size_bytes": 1024**2})
            assert r.status_code == 422 and "at least 5242880" in r.json()["detail"]
            parts = _put_parts(created, data)
            status = c.get(f"/api/v1/uploads/{created['upload_id']}").json()
            assert [p["part_number"] for p in status["parts_uploaded"]] == list(
                range(1, created["part_count"] + 1))
            done = c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                          json={"parts": parts})
            assert done.status_code == 200, done.text
        key = f"in/{created['landing_key']}"
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == len(data)
        assert {k: head["Metadata"][k] for k in ("robot-id", "robot-type", "region")} == {
            "robot-id": "r-s3", "robot-type": "forklift", "region": "us-east"}
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        raw.ingest_landing(open_store(f"s3://{bucket}/in"), open_store(gw.settings.lake))
        with gw.client(token) as c:
            status = c.get(f"/api/v1/uploads/{created['upload_id']}").json()
        verdict = status["verdict"]
        assert status["status"] == "indexed"
        assert (verdict["robot_id"], verdict["robot_type"], verdict["region"],
                verdict["identity_source"]) == ("r-s3", "forklift", "us-east", "upload_metadata")
        assert verdict["content_sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        gw.stop()
