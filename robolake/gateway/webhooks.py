"""Per-tenant webhooks: the raw layer's verdict on each completed upload, POSTed once it
exists.

A tenant's admin sets a URL (`PUT /api/v1/tenants/webhook`) and gets a signing secret once.
A background task of the gateway looks for completed uploads of tenants with a webhook
whose verdict is in `raw/uploads` and not yet delivered, and POSTs
`{"event": "upload.verdict", "upload": {...}, "verdict": {...}}` with
`X-Robolake-Signature: sha256=<HMAC of the body>`. Delivery is at least once (a failed or
unanswered POST is tried again on the next round; receivers de-duplicate by upload_id).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time

import httpx

from robolake.gateway.db import Database
from robolake.gateway.uploads import Uploads

log = logging.getLogger("robolake.webhooks")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenant_webhooks (
    tenant TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    updated_ns BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    upload_id TEXT PRIMARY KEY,
    delivered_ns BIGINT NOT NULL,
    status_code INTEGER NOT NULL
)
"""


def verdict_text(file_name: str, verdict: dict) -> str:
    """One line for people (Slack's `text`, the email body): status, score, first reason."""
    reasons = verdict.get("reasons") or []
    score = verdict.get("quality_score")
    return (f"{file_name}: {verdict.get('status')}"
            + (f", score {score:.0f}" if isinstance(score, int | float) else "")
            + (f"; {reasons[0]}" if reasons else ""))


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(self, db: Database, uploads: Uploads, lake: str, poll_s: float = 30.0):
        self.db, self.uploads, self.lake, self.poll_s = db, uploads, lake, poll_s
        self.db.create(_SCHEMA)
        self._task: asyncio.Task | None = None

    def set(self, tenant: str, url: str) -> str:
        secret = secrets.token_hex(32)
        self.db.execute("DELETE FROM tenant_webhooks WHERE tenant = ?", (tenant,))
        self.db.execute("INSERT INTO tenant_webhooks VALUES (?, ?, ?, ?)",
                        (tenant, url, secret, time.time_ns()))
        return secret

    def remove(self, tenant: str) -> bool:
        _, count = self.db.execute("DELETE FROM tenant_webhooks WHERE tenant = ?", (tenant,))
        return count == 1

    def get(self, tenant: str) -> str | None:
        row = self.db.one("SELECT url FROM tenant_webhooks WHERE tenant = ?", (tenant,))
        return row[0] if row else None

    def pending(self) -> list[tuple[str, str, str, str]]:
        """(upload_id, tenant, url, secret) of completed uploads not delivered yet."""
        rows, _ = self.db.execute(
            "SELECT u.upload_id, u.tenant, w.url, w.secret FROM uploads u "
            "JOIN tenant_webhooks w ON w.tenant = u.tenant "
            "LEFT JOIN webhook_deliveries d ON d.upload_id = u.upload_id "
            "WHERE u.status = 'completed' AND d.upload_id IS NULL "
            "AND u.completed_ns >= w.updated_ns ORDER BY u.completed_ns LIMIT 500")
        return rows

    async def deliver_once(self) -> int:
        pending = self.pending()
        if not pending:
            return 0
        delivered = 0
        async with httpx.AsyncClient(timeout=10) as client:
            for upload_id, _tenant, url, secret in pending:
                session = self.uploads.get(upload_id)
                verdict = await asyncio.to_thread(self.uploads.verdict, self.lake, session)
                if verdict is None:
                    continue  # not indexed yet
                body = json.dumps({
                    "text": verdict_text(session.file_name, verdict),  # Slack-compatible
                    "event": "upload.verdict",
                    "upload": {"upload_id": upload_id, "landing_key": session.landing_key,
                               "file_name": session.file_name, "robot_id": session.robot_id,
                               "robot_type": session.robot_type, "region": session.region},
                    "verdict": verdict}, sort_keys=True).encode()
                try:
                    r = await client.post(url, content=body, headers={
                        "Content-Type": "application/json",
                        "X-Robolake-Event": "upload.verdict",
                        "X-Robolake-Signature": signature(secret, body)})
                except httpx.HTTPError as exc:
                    log.warning("webhook for upload %s: %s", upload_id, type(exc).__name__)
                    continue
                if 200 <= r.status_code < 300:
                    self.db.execute("INSERT INTO webhook_deliveries VALUES (?, ?, ?) "
                                    "ON CONFLICT (upload_id) DO NOTHING",
                                    (upload_id, time.time_ns(), r.status_code))
                    delivered += 1
                else:
                    log.warning("webhook for upload %s: HTTP %d", upload_id, r.status_code)
        return delivered

    async def email_once(self) -> int:
        """Email each completed upload's verdict to its tenant's address (robolake/notify.py),
        once; tenants without an address or without SMTP get none."""
        from robolake.notify import Notice, Notifier, Smtp

        smtp = Smtp.from_env()
        if smtp is None:
            return 0
        notifier = Notifier(self.db, smtp)
        rows, _ = self.db.execute(
            "SELECT u.upload_id FROM uploads u JOIN tenant_emails e ON e.tenant = u.tenant "
            "LEFT JOIN notification_deliveries d ON d.notice_key = 'upload.verdict:' || "
            "u.upload_id AND d.channel = 'email:' || u.tenant WHERE u.status = 'completed' "
            "AND d.notice_key IS NULL ORDER BY u.completed_ns LIMIT 500")
        sent = 0
        for (upload_id,) in rows:
            session = self.uploads.get(upload_id)
            verdict = await asyncio.to_thread(self.uploads.verdict, self.lake, session)
            if verdict is None:
                continue  # not indexed yet
            notice = Notice(f"upload.verdict:{upload_id}", "upload.verdict",
                            f"Upload {session.file_name}: {verdict.get('status')}",
                            verdict_text(session.file_name, verdict),
                            {"upload_id": upload_id, **verdict})
            sent += len(await asyncio.to_thread(notifier.notify, notice, [session.tenant],
                                                ("email",), False))
        return sent

    async def _loop(self) -> None:
        while True:
            try:
                await self.deliver_once()
                await self.email_once()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("webhook round failed: %s", exc)
            await asyncio.sleep(self.poll_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
