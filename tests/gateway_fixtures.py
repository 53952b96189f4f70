"""Shared parts of the gateway tests: the app served by uvicorn on 127.0.0.1 in a thread,
keys and tokens made through the real endpoints, and a real nats-server."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from robolake.gateway import broker
from robolake.gateway.app import create_app
from robolake.gateway.config import GatewaySettings
from robolake.gateway.keys import KeyStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningGateway:
    url: str
    settings: GatewaySettings
    keys: KeyStore
    server: uvicorn.Server
    thread: threading.Thread

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def key(self, role: str = "robot", tenant: str = "acme", robot_id: str | None = "r-1",
            robot_type: str | None = "delivery", region: str | None = "eu-west") -> str:
        if role != "robot" and robot_id == "r-1":
            robot_id = robot_type = region = None
        return self.keys.create(tenant, role, robot_id, robot_type, region)[0]

    def token(self, api_key: str) -> str:
        with self.client() as c:
            r = c.post("/api/v1/auth/token", json={"api_key": api_key})
            assert r.status_code == 200, r.text
            return r.json()["access_token"]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_gateway(settings: GatewaySettings) -> RunningGateway:
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    return RunningGateway(f"http://127.0.0.1:{port}", settings, app.state.keys, server, thread)


def make_settings(tmp: Path, **overrides) -> GatewaySettings:
    landing, lake, state = tmp / "landing", tmp / "lake", tmp / "state"
    for p in (landing, lake, state):
        p.mkdir(parents=True, exist_ok=True)
    settings = GatewaySettings(landing=str(landing), lake=str(lake), state=state,
                               secret=b"s" * 48)
    for name, value in overrides.items():
        setattr(settings, name, value)
    return settings


def nats_server_binary() -> str | None:
    try:
        return broker.nats_server_binary()
    except FileNotFoundError:
        return None


class NatsServer(broker.EmbeddedNats):
    """The gateway's own embedded nats-server (JetStream on loopback); `start` returns the
    server so tests can chain it, and `stop`/`start` again keep its port and storage."""

    def start(self, timeout_s: float = 20) -> NatsServer:
        super().start(timeout_s)
        return self
