"""Every API call lands in the audit log (ops/audit): who (key id and role), what (read for
GET/HEAD, write otherwise), which path, the HTTP status, when and from which address.

An ASGI middleware notes each call when its response has been sent; a background thread
appends what was noted in one commit every `FLUSH_S` (a Delta commit per call would cap
the gateway at a few dozen calls a second), and the app's shutdown appends the rest. The
authenticated principal is left in the request state by robolake.gateway.auth.
Health probes (GET /api/v1/health) are not audited: they say nothing about anyone.
"""

from __future__ import annotations

import logging
import threading
import time

from robolake.governance import audit
from robolake.storage import open_store

FLUSH_S = 0.5
NOT_AUDITED = {("GET", "/api/v1/health")}
_log = logging.getLogger(__name__)


class AuditTrail:
    """Entries noted by request handlers, appended by one thread in batches."""

    def __init__(self, lake_uri: str):
        self.lake_uri = lake_uri
        self._pending: list[audit.Entry] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, entry: audit.Entry) -> None:
        with self._lock:
            self._pending.append(entry)

    def flush(self) -> int:
        """Append what is pending (kept for the next flush if the lake refuses)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            audit.append(open_store(self.lake_uri), batch)
        except Exception:
            _log.exception("audit: %d API call entries not written yet; retrying", len(batch))
            with self._lock:
                self._pending[:0] = batch
            return 0
        return len(batch)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush()

    async def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flush()


class AuditMiddleware:
    def __init__(self, app, trail: AuditTrail):
        self.app = app
        self.trail = trail

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (scope["method"], scope["path"]) in NOT_AUDITED:
            await self.app(scope, receive, send)
            return
        status = {"code": 500}  # what the client gets if the app fails before answering

        async def noting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, noting_send)
        finally:
            self.trail.note(_entry(scope, status["code"], time.perf_counter() - started))


def _entry(scope, status: int, seconds: float) -> audit.Entry:
    principal = scope.get("state", {}).get("principal")
    client = scope.get("client")
    origin = f"{client[0]}:{client[1]}" if client else "unknown"
    if principal is not None:
        actor = audit.Actor(f"key:{principal.key_id}", principal.role, origin=origin)
        details = {"tenant": principal.tenant, "robot_id": principal.robot_id}
    else:
        actor, details = audit.Actor("anonymous", "none", origin=origin), {}
    method = scope["method"]
    details["ms"] = round(seconds * 1000, 1)
    return audit.Entry("read" if method in ("GET", "HEAD", "OPTIONS") else "write",
                       f"{method} {scope['path']}", outcome=str(status), details=details,
                       actor=actor)


def install_audit(app, lake_uri: str) -> AuditTrail:
    trail = AuditTrail(lake_uri)
    app.add_middleware(AuditMiddleware, trail=trail)
    app.state.on_start.append(trail.start)
    app.state.on_stop.append(trail.stop)
    app.state.audit = trail
    return trail
