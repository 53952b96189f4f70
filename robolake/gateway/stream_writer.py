"""`robolake stream-writer`: streamed readings -> 5-minute MCAP files in the landing zone.

A long-running JetStream consumer (durable, explicit acks). Each message (one batch of one
robot) is held, unacknowledged, until every window it contributes to is written; its
readings are grouped per robot into windows of `window_s` (default 5 minutes). A window is
written when the robot's readings have moved `lateness_s` past its end, or when nothing new
arrived for it for `idle_s`. Then, in this order:

1. the MCAP file is written durably (temporary file, fsync, rename, directory fsync; or a
   completed S3 PUT) under a key decided by the window's readings, so the same window
   gives the same key and bytes: a rewrite after a crash finds the file already there;
2. the ids of the messages whose windows are all written go into a small SQLite file;
3. the messages are acked.

A crash before 3 redelivers the messages (after `ack_wait_s`): those recorded in 2 are
acked and dropped, the others rebuild the same window, key and bytes. A batch published
twice (a client retry) is dropped by JetStream's duplicate window, and after that by 2.
Held messages are kept alive with in-progress acks, so a slow window is not redelivered
while this process lives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from robolake.gateway.broker import STREAM_PREFIX, quiet_error, stream_for, subject_for
from robolake.gateway.db import Database
from robolake.gateway.mcapwindow import build_window_mcap, window_digest, window_key
from robolake.gateway.readings import ReadingBatch
from robolake.storage import LocalStore, Store, open_store

log = logging.getLogger("robolake.stream_writer")
DURABLE = "stream-writer"
FAIL_AFTER_WRITE_ENV = "ROBOLAKE_STREAM_WRITER_FAIL_AFTER_WRITE"  # fault injection in tests


@dataclass
class WriterConfig:
    broker_url: str
    landing: str
    state: Path
    regions: list[str] = field(default_factory=list)  # empty: every robotics.raw stream
    window_s: float = 300.0
    lateness_s: float = 10.0
    idle_s: float = 30.0
    ack_wait_s: float = 60.0
    fetch_batch: int = 256


@dataclass
class Window:
    tenant: str
    identity: dict[str, str]
    start_ns: int
    readings: list[dict] = field(default_factory=list)
    msg_ids: set[str] = field(default_factory=set)
    updated: float = 0.0


@dataclass
class Held:
    msg: object
    msg_id: str
    windows: set[tuple] = field(default_factory=set)


class SeenIds:
    """Ids of messages whose readings are in durable files (kept 7 days). In the writer's
    SQLite file, or in PostgreSQL (`ROBOLAKE_GATEWAY_DB`) so a writer pod that is replaced
    keeps what its predecessor recorded."""

    def __init__(self, db: Database):
        self.db = db
        self.db.create("CREATE TABLE IF NOT EXISTS stream_seen (msg_id TEXT PRIMARY KEY, "
                       "landing_key TEXT, at_ns BIGINT)")

    def __contains__(self, msg_id: str) -> bool:
        return self.db.one("SELECT 1 FROM stream_seen WHERE msg_id = ?", (msg_id,)) is not None

    def add(self, items: list[tuple[str, str]]) -> None:
        now = time.time_ns()
        for msg_id, key in items:
            self.db.execute("INSERT INTO stream_seen VALUES (?, ?, ?) "
                            "ON CONFLICT (msg_id) DO NOTHING", (msg_id, key, now))
        self.db.execute("DELETE FROM stream_seen WHERE at_ns < ?", (now - 7 * 86400 * 10**9,))


def write_durably(store: Store, key: str, data: bytes) -> bool:
    """Write `data` at `key` unless it is there already; True if written."""
    if store.exists(key):
        return False
    if isinstance(store, LocalStore):
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        store.write_bytes(key, data)  # S3: durable once the PUT returns
    return True


class StreamWriter:
    def __init__(self, config: WriterConfig):
        self.config = config
        self.landing = open_store(config.landing)
        target = os.environ.get("ROBOLAKE_GATEWAY_DB") or config.state / "stream_writer.db"
        self.seen = SeenIds(Database(target))
        self.windows: dict[tuple, Window] = {}
        self.held: dict[str, Held] = {}
        self.watermark: dict[tuple[str, str], int] = {}
        self.subs: dict[str, object] = {}
        self.files_written: list[str] = []
        self.fail_after_write = os.environ.get(FAIL_AFTER_WRITE_ENV) == "1"

    # consuming --------------------------------------------------------------------------

    async def _subscribe(self, js) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        if self.config.regions:
            names = [stream_for(r) for r in self.config.regions]
        else:
            names = [s.config.name for s in await js.streams_info()
                     if s.config.name.startswith(STREAM_PREFIX)]
        for name in names:
            if name in self.subs:
                continue
            region = name[len(STREAM_PREFIX):].lower()
            try:
                self.subs[name] = await js.pull_subscribe(
                    subject_for(region), durable=DURABLE, stream=name,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                          deliver_policy=DeliverPolicy.ALL,
                                          ack_wait=self.config.ack_wait_s, max_deliver=-1,
                                          max_ack_pending=1_000_000))
                log.info("consuming %s", name)
            except Exception as exc:  # noqa: BLE001 - the stream may not exist yet
                log.debug("cannot consume %s yet: %s", name, exc)

    def _add(self, msg) -> None:
        """Hold a message and put its readings into their windows; a message that is not a
        gateway batch raises before anything is held."""
        headers = msg.headers or {}
        body = json.loads(msg.data)
        # the gateway validated it; checked again so one bad message never stops a window
        ReadingBatch.model_validate({"batch_id": body["batch_id"], "readings": body["readings"]})
        msg_id = (headers.get("Nats-Msg-Id")
                  or f"{msg.metadata.stream}:{msg.metadata.sequence.stream}")
        if msg_id in self.held:  # redelivered while held: keep the newest handle to ack
            self.held[msg_id].msg = msg
            return
        identity = {k: body[k] for k in ("robot_id", "robot_type", "region")}
        robot = (body["tenant"], identity["robot_id"])
        held = Held(msg, msg_id)
        window_ns = int(self.config.window_s * 1e9)
        now = time.monotonic()
        for r in body["readings"]:
            start = r["ts_ns"] - r["ts_ns"] % window_ns
            key = (*robot, start)
            w = self.windows.get(key)
            if w is None:
                w = self.windows[key] = Window(body["tenant"], identity, start)
            w.readings.append(r)
            w.msg_ids.add(msg_id)
            w.updated = now
            held.windows.add(key)
            self.watermark[robot] = max(self.watermark.get(robot, 0), r["ts_ns"])
        self.held[msg_id] = held

    def _ready(self, flush_all: bool = False) -> list[tuple]:
        now = time.monotonic()
        window_ns, late_ns = int(self.config.window_s * 1e9), int(self.config.lateness_s * 1e9)
        return [key for key, w in self.windows.items()
                if flush_all or now - w.updated >= self.config.idle_s
                or self.watermark[key[:2]] >= w.start_ns + window_ns + late_ns]

    async def _flush(self, keys: list[tuple]) -> None:
        done_msgs: list[tuple[str, str]] = []
        for key in keys:
            w = self.windows.pop(key)
            digest = window_digest(w.identity, w.start_ns, w.readings)
            landing_key = window_key(w.tenant, w.identity, w.start_ns, digest)
            data = await asyncio.to_thread(build_window_mcap, w.identity, w.readings)
            wrote = await asyncio.to_thread(write_durably, self.landing, landing_key, data)
            log.info("%s %s (%d readings, %d bytes)", "wrote" if wrote else "already there:",
                     landing_key, len(w.readings), len(data))
            self.files_written.append(landing_key)
            if self.fail_after_write:
                os._exit(17)  # the crash the tests need: file durable, nothing acked
            for msg_id in w.msg_ids:
                held = self.held[msg_id]
                held.windows.discard(key)
                if not held.windows:
                    done_msgs.append((msg_id, landing_key))
        if not done_msgs:
            return
        self.seen.add(done_msgs)
        for msg_id, _ in done_msgs:
            held = self.held.pop(msg_id)
            await held.msg.ack()

    async def run(self, stop: asyncio.Event) -> None:
        import nats
        from nats.errors import TimeoutError as NatsTimeout

        connecting = asyncio.create_task(nats.connect(
            self.config.broker_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            error_cb=quiet_error))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():  # stopped before the broker was ever reached
            connecting.cancel()
            return
        stopping.cancel()
        nc = connecting.result()
        js = nc.jetstream()
        last_discovery = last_progress = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now - last_discovery > 5 or not self.subs:
                    await self._subscribe(js)
                    last_discovery = now
                got = 0
                for sub in list(self.subs.values()):
                    try:
                        msgs = await sub.fetch(self.config.fetch_batch, timeout=0.25)
                    except NatsTimeout:
                        continue
                    except Exception as exc:  # noqa: BLE001 - reconnecting: try again
                        log.warning("fetch failed: %s", exc)
                        await asyncio.sleep(0.5)
                        continue
                    for msg in msgs:
                        if (msg.headers or {}).get("Nats-Msg-Id") in self.seen:
                            await msg.ack()  # already in a durable file
                            continue
                        try:
                            self._add(msg)
                        except (ValueError, KeyError, TypeError) as exc:
                            # not a batch the gateway wrote: never redeliver it
                            log.error("dropping malformed message %s: %s",
                                      (msg.headers or {}).get("Nats-Msg-Id"), exc)
                            await msg.term()
                    got += len(msgs)
                if not self.subs:
                    await asyncio.sleep(0.25)
                await self._flush(self._ready())
                if time.monotonic() - last_progress > self.config.ack_wait_s / 3:
                    for held in self.held.values():
                        await held.msg.in_progress()  # still working on it: no redelivery
                    last_progress = time.monotonic()
        finally:
            # windows still open are not written: their messages are handed back for
            # redelivery (to this writer's successor) rather than acked
            for held in self.held.values():
                with contextlib.suppress(Exception):
                    await held.msg.nak()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), timeout=5)


def config_from_env(broker: str | None, regions: str) -> WriterConfig:
    from robolake.gateway.config import _env_float, state_dir
    from robolake.settings import Settings

    state = state_dir()
    embedded = state / "broker.url"  # written by `robolake gateway` on the embedded default
    url = (broker or os.environ.get("ROBOLAKE_BROKER_URL")
           or (embedded.read_text().strip() if embedded.exists() else None))
    if not url:
        raise ValueError("no broker: pass --broker nats://host:4222, set ROBOLAKE_BROKER_URL, "
                         "or start `robolake gateway` (its embedded broker) first")
    return WriterConfig(
        broker_url=url, landing=Settings.from_env().landing, state=state,
        regions=[r for r in regions.split(",") if r],
        window_s=_env_float("ROBOLAKE_STREAM_WINDOW_S", 300.0),
        lateness_s=_env_float("ROBOLAKE_STREAM_LATENESS_S", 10.0),
        idle_s=_env_float("ROBOLAKE_STREAM_IDLE_S", 30.0),
        ack_wait_s=_env_float("ROBOLAKE_STREAM_ACK_WAIT_S", 60.0))


def run_stream_writer(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = config_from_env(args.broker, args.regions)
    writer = StreamWriter(config)
    print(f"stream writer: {config.broker_url} -> {writer.landing.uri} "
          f"(windows of {config.window_s:g}s)", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await writer.run(stop)

    asyncio.run(main())
    return 0
