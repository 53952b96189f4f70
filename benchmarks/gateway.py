"""Gateway streaming throughput and latency to the broker's ack, beside the broker's own
publish rate, in one run.

Gateway: `robolake gateway`'s app under uvicorn (a separate process, one worker) with a
real nats-server (JetStream, file storage); local async clients post batches of IMU
readings for many robots (rate limits lifted) and time each request to its 202, which
the gateway sends only after JetStream's ack.
Baseline (`nats bench` equivalent): the same messages published straight to JetStream
from one Python client with the same concurrency, timed to each publish ack.

Prints accepted readings/s, batches/s and p50/p99 latency for both, and how many gateway
replicas the fleet target (100 K readings/s, p99 < 100 ms) needs at the measured rate.
Usage: python benchmarks/gateway.py [--requests 2000] [--batch 100] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402

from robolake.gateway.broker import EmbeddedNats, stream_for, subject_for  # noqa: E402
from robolake.gateway.keys import KeyStore  # noqa: E402

T0 = 1_795_165_200 * 10**9
FLEET_TARGET_READINGS_S = 100_000
P99_TARGET_MS = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(robot: int, seq: int, size: int) -> dict:
    base = T0 + seq * size * 10**7
    return {"batch_id": f"b{robot}-{seq}", "readings": [
        {"sensor": "imu", "ts_ns": base + i * 10**7, "ax": 0.1 * i, "ay": 0.2, "az": 9.81,
         "gx": 0.01, "gy": 0.0, "gz": 0.05} for i in range(size)]}


def percentiles(latencies_s: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(latencies_s, n=100, method="inclusive")
    return q[49] * 1e3, q[98] * 1e3


async def drive_gateway(url: str, tokens: list[str], requests: int, size: int,
                        concurrency: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    refused = 0
    queue: asyncio.Queue = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    bodies = {n: json.dumps(batch(n % len(tokens), n, size)).encode() for n in range(requests)}

    async def client() -> None:
        nonlocal refused
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while not queue.empty():
                n = queue.get_nowait()
                start = time.perf_counter()
                r = await c.post("/api/v1/data/upload", content=bodies[n], headers={
                    "Authorization": f"Bearer {tokens[n % len(tokens)]}",
                    "Content-Type": "application/json"})
                if r.status_code == 202:
                    latencies.append(time.perf_counter() - start)
                else:
                    refused += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, refused


async def drive_broker(nats_url: str, requests: int, size: int,
                       concurrency: int) -> tuple[float, list[float]]:
    import nats

    from robolake.gateway.readings import ReadingBatch, broker_message

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    payloads = [broker_message(ReadingBatch.model_validate(batch(n % 64, n, size)), "bench",
                               {"robot_id": f"r{n % 64}", "robot_type": "delivery",
                                "region": "bench"}, T0) for n in range(requests)]
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)

    async def publisher() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            start = time.perf_counter()
            await js.publish(subject_for("bench"), payloads[n], timeout=10,
                             headers={"Nats-Msg-Id": f"direct-{n}"})
            latencies.append(time.perf_counter() - start)

    from nats.js.api import StorageType, StreamConfig

    await js.add_stream(StreamConfig(name=stream_for("bench"), subjects=[subject_for("bench")],
                                     storage=StorageType.FILE, duplicate_window=120))
    started = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await nc.close()
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="readings per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--robots", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="robolake-bench-gw-") as tmp:
        tmp = Path(tmp)
        broker = EmbeddedNats(tmp / "nats")
        nats_url = broker.start()
        state = tmp / "state"
        state.mkdir()
        keys = KeyStore(state / "gateway.db")
        api_keys = [keys.create("bench", "robot", f"r{i}", "delivery", "eu-west")[0]
                    for i in range(args.robots)]
        port = free_port()
        env = {**os.environ, "ROBOLAKE_GATEWAY_STATE": str(state),
               "ROBOLAKE_BROKER_URL": nats_url, "ROBOLAKE_RATE_ROBOT": "1000000",
               "ROBOLAKE_RATE_TENANT": "1000000", "ROBOLAKE_LANDING": str(tmp / "landing"),
               "ROBOLAKE_LAKE": str(tmp / "lake"), "ROBOLAKE_JWT_SECRET": "b" * 48}
        server = subprocess.Popen(
            [sys.executable, "-c", "import uvicorn; from robolake.gateway.app import "
             "create_app; from robolake.gateway.config import GatewaySettings; "
             f"uvicorn.run(create_app(GatewaySettings.from_env()), host='127.0.0.1', "
             f"port={port}, log_level='warning')"],
            env=env, cwd=tmp)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 30
            while True:
                try:
                    if httpx.get(f"{url}/api/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
                if time.time() > deadline:
                    raise RuntimeError("the gateway did not start")
            tokens = [httpx.post(f"{url}/api/v1/auth/token", json={"api_key": k}).json()[
                "access_token"] for k in api_keys]
            # warm-up: stream creation, connections
            asyncio.run(drive_gateway(url, tokens, 50, args.batch, 4))
            proc = psutil.Process(server.pid)
            cpu_before = sum(proc.cpu_times()[:2])
            gw_s, gw_lat, refused = asyncio.run(drive_gateway(
                url, tokens, args.requests, args.batch, args.concurrency))
            server_cpu_s = sum(proc.cpu_times()[:2]) - cpu_before
            direct_s, direct_lat = asyncio.run(drive_broker(
                nats_url, args.requests, args.batch, args.concurrency))
        finally:
            server.terminate()
            server.wait(timeout=20)
            broker.stop()

    gw_p50, gw_p99 = percentiles(gw_lat)
    d_p50, d_p99 = percentiles(direct_lat)
    gw_rate = len(gw_lat) * args.batch / gw_s
    direct_rate = len(direct_lat) * args.batch / direct_s
    print(f"{args.requests} batches x {args.batch} readings, {args.concurrency} concurrent "
          f"clients, {args.robots} robots, {os.cpu_count()} CPU cores, one gateway process")
    print(f"{'':<34}{'readings/s':>12}{'batches/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'gateway (HTTP -> JetStream ack)':<34}{gw_rate:>12,.0f}"
          f"{len(gw_lat) / gw_s:>11,.0f}{gw_p50:>9.1f}{gw_p99:>9.1f}")
    print(f"{'broker alone (JetStream publish)':<34}{direct_rate:>12,.0f}"
          f"{len(direct_lat) / direct_s:>11,.0f}{d_p50:>9.1f}{d_p99:>9.1f}")
    print(f"gateway / broker throughput: {gw_rate / direct_rate:.2f}x; refused: {refused}")
    cpu_ms = server_cpu_s / len(gw_lat) * 1e3
    per_core = 1e3 / cpu_ms * args.batch
    print(f"gateway process CPU: {cpu_ms:.2f} ms per batch -> {per_core:,.0f} readings/s per "
          f"core (the load generator shares this machine's cores)")
    replicas = math.ceil(FLEET_TARGET_READINGS_S / gw_rate)
    cores = math.ceil(FLEET_TARGET_READINGS_S / per_core)
    print(f"fleet target {FLEET_TARGET_READINGS_S:,} readings/s: {replicas} replica(s) at the "
          f"measured rate, {cores} gateway core(s) by CPU per batch; p99 {gw_p99:.1f} ms vs "
          f"target {P99_TARGET_MS:g} ms ({'met' if gw_p99 < P99_TARGET_MS else 'NOT met'} "
          f"at {args.concurrency} concurrent clients)")


if __name__ == "__main__":
    main()
