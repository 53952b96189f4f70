"""Two gateway replicas sharing one PostgreSQL store (ROBOLAKE_GATEWAY_DB): a key made
through one works on the other, a revocation at one stops the token at the other at once,
and an upload opened on one is completed on the other."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from gateway_fixtures import make_settings, start_gateway
from test_postgres_instance import postgres  # noqa: F401 - the throwaway cluster fixture

pytestmark = pytest.mark.service


def test_replicas_share_keys_revocations_and_uploads(tmp_path, postgres, monkeypatch):  # noqa: F811
    dsn = (f"postgresql://{postgres['DAGSTER_PG_USER']}:{postgres['DAGSTER_PG_PASSWORD']}@"
           f"{postgres['DAGSTER_PG_HOST']}:{postgres['DAGSTER_PG_PORT']}/"
           f"{postgres['DAGSTER_PG_DB']}")
    monkeypatch.setenv("ROBOLAKE_GATEWAY_DB", dsn)
    landing = tmp_path / "landing"
    a = start_gateway(make_settings(tmp_path / "a", landing=str(landing)))
    b = start_gateway(make_settings(tmp_path / "b", landing=str(landing)))
    try:
        robot_key = a.key("robot", robot_id="r-pg")
        token = b.token(robot_key)  # made at a, exchanged at b
        admin = a.token(a.key("admin"))
        data = b"\x89MCAP0\r\n" + bytes(range(256)) * 300
        with a.client(token) as c:
            created = c.post("/api/v1/uploads", json={
                "file_name": "pg.mcap", "size_bytes": len(data),
                "part_size_bytes": 64 * 1024}).json()
        parts = []
        for p in created["parts"]:
            chunk = data[(p["part_number"] - 1) * 65536: p["part_number"] * 65536]
            url = p["url"].replace(a.url, b.url)  # any replica serves the signed URL
            r = httpx.put(url, content=chunk)
            assert r.status_code == 200, r.text
            parts.append({"part_number": p["part_number"], "etag": r.headers["etag"]})
        with b.client(token) as c:
            done = c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                          json={"parts": parts})
        assert done.status_code == 200, done.text
        landed = landing / done.json()["landing_key"]
        assert hashlib.sha256(landed.read_bytes()).digest() == hashlib.sha256(data).digest()
        with a.client(token) as c:
            assert c.get("/api/v1/auth/whoami").json()["robot_id"] == "r-pg"
        with b.client(admin) as c:
            assert c.post(f"/api/v1/keys/{robot_key.split('_')[1]}/revoke").status_code == 200
        with a.client(token) as c:
            r = c.get("/api/v1/auth/whoami")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
    finally:
        a.stop()
        b.stop()
