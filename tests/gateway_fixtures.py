"""Shared parts of the gateway tests: the app served by uvicorn on 127.0.0.1 in a thread,
keys and tokens made through the real endpoints, and a real nats-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

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
    here = Path(sys.executable).parent / "nats-server"
    return str(here) if here.exists() else shutil.which("nats-server")


class NatsServer:
    """A real nats-server with JetStream on a loopback port, its storage in a folder."""

    def __init__(self, store: Path, port: int | None = None):
        self.store, self.port = store, port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        binary = nats_server_binary()
        assert binary, "nats-server not installed"
        self.store.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
