"""Keys, tokens and roles against the gateway served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt
import pytest
from gateway_fixtures import make_settings, start_gateway

from robolake.gateway.keys import KeyStore


@pytest.fixture
def gw(tmp_path):
    running = start_gateway(make_settings(tmp_path))
    yield running
    running.stop()


def test_key_exchanged_for_token_carrying_the_keys_identity(gw):
    key = gw.key("robot", tenant="acme", robot_id="r-7", robot_type="delivery",
                 region="eu-west")
    with gw.client() as c:
        r = c.post("/api/v1/auth/token", json={"api_key": key})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 900
    claims = jwt.decode(body["access_token"], gw.settings.secret, algorithms=["HS256"],
                        issuer="robolake-gateway")
    assert (claims["tenant"], claims["role"], claims["robot_id"], claims["robot_type"],
            claims["region"]) == ("acme", "robot", "r-7", "delivery", "eu-west")
    assert 0 < claims["exp"] - claims["iat"] <= 900
    with gw.client(body["access_token"]) as c:
        me = c.get("/api/v1/auth/whoami").json()
    assert me == {"tenant": "acme", "role": "robot", "robot_id": "r-7",
                  "robot_type": "delivery", "region": "eu-west"}


def test_keys_are_stored_hashed(gw):
    key = gw.key("engineer")
    raw = (gw.settings.state / "gateway.db").read_bytes()
    wal = gw.settings.state / "gateway.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    secret = key.split("_", 2)[2]
    assert secret.encode() not in raw and key.encode() not in raw


@pytest.mark.parametrize("api_key", ["rlk_000000000000_nope", "not-a-key", "rlk_"])
def test_unknown_key_is_401(gw, api_key):
    with gw.client() as c:
        r = c.post("/api/v1/auth/token", json={"api_key": api_key})
    assert r.status_code == 401 and "unknown or revoked" in r.json()["detail"]


def test_revoked_key_401_for_new_tokens_and_for_tokens_already_issued(gw):
    key = gw.key("robot")
    token = gw.token(key)
    admin = gw.token(gw.key("admin"))
    key_id = key.split("_")[1]
    with gw.client(admin) as c:
        assert c.post(f"/api/v1/keys/{key_id}/revoke").json() == {"key_id": key_id,
                                                                  "revoked": True}
    with gw.client(token) as c:
        r = c.get("/api/v1/auth/whoami")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    with gw.client() as c:
        assert c.post("/api/v1/auth/token", json={"api_key": key}).status_code == 401


def test_expired_token_401(tmp_path):
    gw = start_gateway(make_settings(tmp_path, token_ttl_s=2))
    try:
        token = gw.token(gw.key("robot"))
        with gw.client(token) as c:
            assert c.get("/api/v1/auth/whoami").status_code == 200
            time.sleep(3.1)
            r = c.get("/api/v1/auth/whoami")
        assert r.status_code == 401 and "token expired" in r.json()["detail"]
    finally:
        gw.stop()


def test_tampered_token_401(gw):
    token = gw.token(gw.key("robot", robot_id="r-1"))
    header, payload, sig = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    # claim another robot with the original signature
    claims["robot_id"], claims["role"] = "r-2", "admin"
    forged_payload = jwt.encode(claims, "k" * 32, algorithm="HS256").split(".")[1]
    forged = f"{header}.{forged_payload}.{sig}"
    # signed with another secret, and the unsigned 'none' algorithm
    other = jwt.encode(claims, "another-secret-another-secret-another", algorithm="HS256")
    unsigned = jwt.encode(claims, None, algorithm="none")
    with gw.client() as c:
        for bad in (forged, other, unsigned, "garbage", token[:-4] + "AAAA"):
            r = c.get("/api/v1/auth/whoami", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401, bad
        r = c.get("/api/v1/auth/whoami")
        assert r.status_code == 401 and "missing bearer token" in r.json()["detail"]


def test_wrong_role_403(gw):
    robot = gw.token(gw.key("robot"))
    auditor = gw.token(gw.key("auditor"))
    key_id = gw.key("robot", robot_id="r-9").split("_")[1]
    with gw.client(robot) as c:
        r = c.get("/api/v1/keys")
        assert r.status_code == 403 and "role 'robot' may not" in r.json()["detail"]
    with gw.client(auditor) as c:
        assert c.get("/api/v1/keys").status_code == 200
        r = c.post(f"/api/v1/keys/{key_id}/revoke")
        assert r.status_code == 403 and "allowed: admin" in r.json()["detail"]


def test_other_tenants_keys_are_invisible(gw):
    gw.key("robot", tenant="other", robot_id="x-1")
    admin = gw.token(gw.key("admin", tenant="acme"))
    other_id = [k for k in gw.keys.list() if k.tenant == "other"][0].key_id
    with gw.client(admin) as c:
        listed = c.get("/api/v1/keys").json()
        assert {k["tenant"] for k in listed} == {"acme"}
        assert c.post(f"/api/v1/keys/{other_id}/revoke").status_code == 404
    assert not gw.keys.get(other_id).revoked


def test_unknown_body_field_is_422_naming_it(gw):
    with gw.client() as c:
        r = c.post("/api/v1/auth/token", json={"api_key": "x", "role": "admin"})
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "role"]]


def test_openapi_document_served(gw):
    with gw.client() as c:
        doc = c.get("/api/v1/openapi.json").json()
    assert doc["info"]["title"] == "Robolake gateway"
    assert "/api/v1/auth/token" in doc["paths"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


def test_cli_keys_create_prints_the_key_alone_once(tmp_path):
    env = {**os.environ, "ROBOLAKE_GATEWAY_STATE": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "robolake_assets.cli", "keys", "create", "--tenant", "acme",
           "--robot", "r-3", "--robot-type", "delivery", "--region", "eu-west", "--role",
           "robot"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlk_")
    record = KeyStore(tmp_path / "state" / "gateway.db").verify(lines[0])
    assert (record.tenant, record.robot_id, record.role) == ("acme", "r-3", "robot")
    listed = subprocess.run([sys.executable, "-m", "robolake_assets.cli", "keys", "list"],
                            env=env, capture_output=True, text=True, check=True).stdout
    assert record.key_id in listed and lines[0].split("_", 2)[2] not in listed
    bad = subprocess.run([*cmd[:-1], "pilot"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "--role 'pilot': expected one of robot, engineer, admin, auditor" in bad.stderr
    missing = subprocess.run(cmd[:9] + ["--role", "robot"], env=env, capture_output=True,
                             text=True)
    assert "needs --robot-type, --region" in missing.stderr
