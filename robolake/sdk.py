"""Robolake SDK: upload recordings and stream readings through the gateway.

    from robolake.sdk import DataUploader

    up = DataUploader("https://gateway.example", api_key, robot_id="r-1", region="eu-west")
    status = up.upload_file("run.mcap", metadata={"mission": "m-7"})
    with up.stream_upload(batch_size=1000, flush_interval=5) as s:
        s.write({"sensor": "imu", "ts_ns": t, "ax": ..., "ay": ..., "az": ..., "gx": ...,
                 "gy": ..., "gz": ...})

Files go up as multipart uploads: parts in parallel, each with its MD5 (Content-MD5, and the
returned ETag compared), retried with exponential backoff; the upload id is kept in a small
state file, so running `upload_file` again after a crash uploads only the parts the server
does not already hold. Streams are buffered locally (at most `batch_size` readings or 1 MB
per batch), flushed in the background, and retried with the same batch id until the gateway
answers 202 (stored by the broker): at least once, with duplicates dropped downstream.

The robot's identity is the API key's: `robot_id` and `region` are checked against it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgpack

RETRY_STATUSES = {429, 500, 502, 503, 504}


class UploadFailed(RuntimeError):
    """The gateway refused, or kept failing after every retry; the message says why."""


def _default_state_dir() -> Path:
    return Path(os.environ.get("ROBOLAKE_SDK_STATE")
                or Path.home() / ".cache" / "robolake" / "uploads")


class DataUploader:
    def __init__(self, endpoint: str, api_key: str, robot_id: str, region: str, *,
                 workers: int = 4, max_retries: int = 6, backoff_s: float = 0.5,
                 timeout_s: float = 60.0, state_dir: str | Path | None = None):
        self.endpoint = endpoint.rstrip("/")
        self.api_key, self.robot_id, self.region = api_key, robot_id, region
        self.workers, self.max_retries, self.backoff_s = workers, max_retries, backoff_s
        self.state_dir = Path(state_dir) if state_dir else _default_state_dir()
        self.http = httpx.Client(timeout=timeout_s)
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.http.close()

    # auth and requests ------------------------------------------------------------------

    def _bearer(self, refresh: bool = False) -> str:
        with self._lock:
            if refresh or self._token is None or time.time() > self._token_expires - 60:
                r = self._send("POST", "/api/v1/auth/token", json={"api_key": self.api_key},
                               auth=False)
                body = r.json()
                if body.get("robot_id") != self.robot_id:
                    raise UploadFailed(f"this API key belongs to robot {body.get('robot_id')!r}, "
                                       f"not {self.robot_id!r}")
                self._token = body["access_token"]
                self._token_expires = time.time() + body["expires_in"]
                who = self._send("GET", "/api/v1/auth/whoami", auth=False, headers={
                    "Authorization": f"Bearer {self._token}"}).json()
                if who.get("region") != self.region:
                    raise UploadFailed(f"this API key's robot is in region {who.get('region')!r}, "
                                       f"not {self.region!r}")
            return self._token

    def _wait(self, attempt: int, retry_after: str | None = None) -> None:
        delay = self.backoff_s * 2 ** attempt * (0.5 + random.random())
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        time.sleep(min(delay, 30.0))

    def _send(self, method: str, path: str, *, auth: bool = True,
              headers: dict[str, str] | None = None, ok: tuple[int, ...] = (200, 201, 202),
              **kw) -> httpx.Response:
        """A request with retries: connection errors, 429/5xx (Retry-After honoured), and
        one token refresh on 401."""
        refreshed = False
        for attempt in range(self.max_retries + 1):
            sent = dict(headers or {})
            if auth:
                sent["Authorization"] = f"Bearer {self._bearer()}"
            try:
                r = self.http.request(method, self.endpoint + path, headers=sent, **kw)
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise UploadFailed(f"{method} {path}: {exc}") from exc
                self._wait(attempt)
                continue
            if r.status_code in ok:
                return r
            if r.status_code == 401 and auth and not refreshed:
                refreshed = True
                self._bearer(refresh=True)
                continue
            if r.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self._wait(attempt, r.headers.get("retry-after"))
                continue
            raise UploadFailed(f"{method} {path}: {r.status_code} {_detail(r)}")
        raise UploadFailed(f"{method} {path}: gave up after {self.max_retries} retries")

    # files ------------------------------------------------------------------------------

    def _state_path(self, path: Path) -> Path:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.endpoint}|{self.robot_id}"
        return self.state_dir / f"{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json"

    def upload_file(self, path: str | Path, metadata: dict[str, str] | None = None, *,
                    part_size: int | None = None,
                    on_part: Callable[[int], None] | None = None) -> dict:
        """Upload a recording; returns the gateway's status of the upload. Run again after a
        crash, it resumes from the parts already uploaded. `on_part(n)` is called after each
        part is stored (progress)."""
        path = Path(path)
        state_path = self._state_path(path)
        session = json.loads(state_path.read_text()) if state_path.exists() else None
        done: dict[int, str] = {}
        if session is not None:
            status = self._send("GET", f"/api/v1/uploads/{session['upload_id']}",
                                ok=(200, 404)).json()
            if status.get("status") in ("completed", "indexed"):
                state_path.unlink(missing_ok=True)
                return status
            if "parts_uploaded" not in status:  # unknown to the server (expired): start over
                session = None
            else:
                done = {p["part_number"]: p["etag"] for p in status["parts_uploaded"]}
        if session is None:
            sha = _sha256_file(path)
            body = {"file_name": path.name, "size_bytes": path.stat().st_size,
                    "sha256": sha, "metadata": metadata or {}}
            if part_size:
                body["part_size_bytes"] = part_size
            created = self._send("POST", "/api/v1/uploads", json=body).json()
            session = {"upload_id": created["upload_id"], "part_size": created["part_size_bytes"],
                       "part_count": created["part_count"]}
            urls = {p["part_number"]: p["url"] for p in created["parts"]}
            state_path.parent.mkdir(parents=True, exist_ok=True)
            state_path.write_text(json.dumps(session))
        else:
            urls = {}
        upload_id, size = session["upload_id"], session["part_size"]
        # a part counts as uploaded only if the server's ETag is the MD5 of our bytes
        etags = {n: e for n, e in done.items() if e == _part_md5(path, n, size)}
        missing = [n for n in range(1, session["part_count"] + 1) if n not in etags]
        if missing and not urls:
            urls = {u["part_number"]: u["url"] for u in self._send(
                "POST", f"/api/v1/uploads/{upload_id}/urls",
                json={"part_numbers": missing}).json()}

        def put(n: int) -> tuple[int, str]:
            etag = self._put_part(path, upload_id, n, size, urls)
            if on_part is not None:
                on_part(n)
            return n, etag

        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            for n, etag in pool.map(put, missing):
                etags[n] = etag
        status = self._send("POST", f"/api/v1/uploads/{upload_id}/complete", json={
            "parts": [{"part_number": n, "etag": etags[n]} for n in sorted(etags)]}).json()
        state_path.unlink(missing_ok=True)
        return status

    def _put_part(self, path: Path, upload_id: str, n: int, size: int,
                  urls: dict[int, str]) -> str:
        data = _read_part(path, n, size)
        md5 = hashlib.md5(data, usedforsecurity=False)
        for attempt in range(self.max_retries + 1):
            try:
                r = self.http.put(urls[n], content=data, headers={
                    "Content-MD5": base64.b64encode(md5.digest()).decode()})
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise UploadFailed(f"part {n}: {exc}") from exc
                self._wait(attempt)
                continue
            if r.status_code == 200:
                etag = r.headers.get("etag", "").strip('"')
                if etag != md5.hexdigest():
                    raise UploadFailed(f"part {n}: the server stored bytes whose MD5 {etag} is "
                                       f"not the part's {md5.hexdigest()}")
                return etag
            if r.status_code == 403 and attempt < self.max_retries:  # expired: new URL
                urls[n] = self._send("POST", f"/api/v1/uploads/{upload_id}/urls",
                                     json={"part_numbers": [n]}).json()[0]["url"]
                continue
            if (r.status_code in RETRY_STATUSES or r.status_code == 400) \
                    and attempt < self.max_retries:
                self._wait(attempt, r.headers.get("retry-after"))
                continue
            raise UploadFailed(f"part {n}: {r.status_code} {_detail(r)}")
        raise UploadFailed(f"part {n}: gave up after {self.max_retries} retries")

    # streams ----------------------------------------------------------------------------

    def stream_upload(self, batch_size: int = 1000, flush_interval: float = 5.0,
                      max_batch_bytes: int = 1 << 20) -> StreamSession:
        return StreamSession(self, batch_size, flush_interval, max_batch_bytes)

    def send_batch(self, readings: list[dict], batch_id: str) -> dict:
        """One batch, retried with the same id until the gateway says the broker has it."""
        payload = msgpack.packb({"batch_id": batch_id, "readings": readings})
        return self._send("POST", "/api/v1/data/upload", content=payload,
                          headers={"Content-Type": "application/msgpack"}).json()


class StreamSession:
    """Readings buffered and sent in batches by a background thread (see DataUploader)."""

    def __init__(self, uploader: DataUploader, batch_size: int, flush_interval: float,
                 max_batch_bytes: int):
        self.uploader = uploader
        self.batch_size, self.flush_interval = batch_size, flush_interval
        # headroom under the gateway's limit for the batch's envelope
        self.max_batch_bytes = max_batch_bytes - 1024
        self._buffer: list[dict] = []
        self._buffer_bytes = 0
        self._lock = threading.Lock()
        self._batches: queue.Queue = queue.Queue(maxsize=64)  # back-pressure on write()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.accepted = 0  # readings the gateway acknowledged (stored by the broker)
        self.batches_sent = 0
        self._sender = threading.Thread(target=self._send_loop, daemon=True)
        self._timer = threading.Thread(target=self._flush_loop, daemon=True)

    def __enter__(self) -> StreamSession:
        self._sender.start()
        self._timer.start()
        return self

    def write(self, reading: dict) -> None:
        if self._error is not None:
            raise UploadFailed(f"the stream failed: {self._error}") from self._error
        size = len(msgpack.packb(reading))
        with self._lock:
            if self._buffer and self._buffer_bytes + size > self.max_batch_bytes:
                self._cut()
            self._buffer.append(reading)
            self._buffer_bytes += size
            if len(self._buffer) >= self.batch_size:
                self._cut()

    def flush(self) -> None:
        with self._lock:
            self._cut()

    def _cut(self) -> None:
        if self._buffer:
            # the id is fixed when the batch is cut: every retry sends the same one
            self._batches.put((uuid.uuid4().hex, self._buffer))
            self._buffer, self._buffer_bytes = [], 0

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def _send_loop(self) -> None:
        while True:
            item = self._batches.get()
            if item is None:
                return
            batch_id, readings = item
            if self._error is not None:
                continue  # keep draining so write() never blocks on a dead sender
            try:
                self.uploader.send_batch(readings, batch_id)
                self.accepted += len(readings)
                self.batches_sent += 1
            except BaseException as exc:  # noqa: BLE001 - surfaced by write()/close()
                self._error = exc

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._timer.join()
        self.flush()
        self._batches.put(None)
        self._sender.join()
        if self._error is not None and exc_info[0] is None:
            raise UploadFailed(f"the stream failed: {self._error}") from self._error


def _detail(r: httpx.Response) -> str:
    try:
        return json.dumps(r.json().get("detail"))[:500]
    except (ValueError, AttributeError):
        return r.text[:500]


def _read_part(path: Path, n: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek((n - 1) * size)
        return f.read(size)


def _part_md5(path: Path, n: int, size: int) -> str:
    return hashlib.md5(_read_part(path, n, size), usedforsecurity=False).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
