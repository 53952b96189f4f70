"""A tenant's webhook receives the raw layer's verdict on an upload, signed, once."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from gateway_fixtures import make_settings, start_gateway
from test_gateway_uploads import START_NS, UNNAMED, _put_parts

from robolake import raw
from robolake.simulate import simulate_recording
from robolake.storage import open_store


class Receiver:
    """An HTTP server on 127.0.0.1 recording what is POSTed to it; the first answer can be
    made to fail, to see the delivery tried again."""

    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(500)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver(fail_first=1)
    yield r
    r.stop()


def test_verdict_is_posted_to_the_tenants_webhook(tmp_path, receiver):
    gw = start_gateway(make_settings(tmp_path, webhook_poll_s=0.2))
    try:
        truth = simulate_recording(tmp_path, UNNAMED, START_NS, 4.0, seed=8,
                                   faults=["no_identity"])
        data = (tmp_path / truth["file"]).read_bytes()
        admin = gw.token(gw.key("admin"))
        robot = gw.token(gw.key("robot", robot_id="r-hook"))
        with gw.client(robot) as c:
            assert c.put("/api/v1/tenants/webhook", json={"url": receiver.url}).status_code \
                == 403
        with gw.client(admin) as c:
            r = c.put("/api/v1/tenants/webhook", json={"url": "ftp://x"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "url"]
            secret = c.put("/api/v1/tenants/webhook",
                           json={"url": receiver.url}).json()["signing_secret"]
            assert c.get("/api/v1/tenants/webhook").json() == {"tenant": "acme",
                                                              "url": receiver.url}
        with gw.client(robot) as c:
            created = c.post("/api/v1/uploads", json={
                "file_name": "hook.mcap", "size_bytes": len(data),
                "part_size_bytes": 128 * 1024}).json()
            parts = _put_parts(created, data)
            assert c.post(f"/api/v1/uploads/{created['upload_id']}/complete",
                          json={"parts": parts}).status_code == 200
        time.sleep(1.0)
        assert receiver.received == []  # no verdict yet: nothing to say
        raw.ingest_landing(open_store(gw.settings.landing), open_store(gw.settings.lake))
        deadline = time.time() + 20
        while not receiver.received and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a second delivery would arrive within this
        assert len(receiver.received) == 1  # the first answer (500) was tried again, once
        headers, body = receiver.received[0]
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Robolake-Signature"] == expected
        event = json.loads(body)
        assert event["event"] == "upload.verdict"
        assert event["upload"]["upload_id"] == created["upload_id"]
        assert event["upload"]["robot_id"] == "r-hook"
        assert event["verdict"]["content_sha256"] == hashlib.sha256(data).hexdigest()
        assert event["verdict"]["status"] in ("accepted", "flagged")
        assert event["verdict"]["robot_id"] == "r-hook"
        # Slack-compatible: a Slack incoming-webhook URL shows this line (issue 17)
        assert event["text"].startswith(f"{event['upload']['file_name']}: "
                                        f"{event['verdict']['status']}, score ")
        with gw.client(admin) as c:
            assert c.delete("/api/v1/tenants/webhook").status_code == 204
            assert c.delete("/api/v1/tenants/webhook").status_code == 404
    finally:
        gw.stop()


