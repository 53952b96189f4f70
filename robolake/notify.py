"""Notifications to people: per-tenant webhooks (Slack-compatible JSON) and email (SMTP).

Events: `upload.verdict` (the gateway, robolake/gateway/webhooks.py), `run.failed`,
`check.failed` (a blocking check) and `freshness.breached` (the cleaned layer's SLA), the
last three from Dagster sensors (robolake_sensors/notifications.py).

- **Who hears it.** A tenant's channels are kept beside its keys in the gateway's database:
  the webhook its admin set (`PUT /api/v1/tenants/webhook`, signed with its secret as upload
  verdicts are) and an email address (`robolake notify-email TENANT ADDRESS`). A run
  requested through the platform API belongs to the tenant in its `robolake/requested-by`
  tag; a partition's run or check to the tenants that uploaded recordings of its robot type;
  a freshness breach to the tenant of the oldest waiting file. Everything also goes to the
  tenant `ops` when it has channels (an operator's key: `robolake keys create --tenant ops`).
- **What is sent.** One JSON body for every webhook: Slack's incoming-webhook `text` (so a
  Slack URL works as it is) plus `event`, `title` and `data` for programs; the email has the
  title as subject and the text as body. Nothing secret is in them.
- **Once.** Each (notice key, channel) is recorded when delivered; a sensor that evaluates the
  same event again sends nothing. A failed delivery is logged; upload verdicts are tried again
  every round until delivered, a sensor's events are not (its cursor has moved on).

SMTP: `ROBOLAKE_SMTP_HOST` (unset: no email), `ROBOLAKE_SMTP_PORT` (25),
`ROBOLAKE_SMTP_FROM` (robolake@localhost); plain SMTP to a relay on the cluster network.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

import httpx

from robolake.gateway.db import Database
from robolake.gateway.uploads import _SCHEMA as UPLOADS_SCHEMA
from robolake.gateway.webhooks import _SCHEMA as WEBHOOKS_SCHEMA
from robolake.gateway.webhooks import signature

log = logging.getLogger("robolake.notify")
OPS_TENANT = "ops"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenant_emails (
    tenant TEXT PRIMARY KEY,
    email TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notification_deliveries (
    notice_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    delivered_ns BIGINT NOT NULL,
    PRIMARY KEY (notice_key, channel)
)
"""


@dataclass(frozen=True)
class Notice:
    key: str  # de-duplication key, e.g. "run.failed:<run id>"
    event: str  # upload.verdict | run.failed | check.failed | freshness.breached
    title: str
    text: str
    data: dict = field(default_factory=dict)


def webhook_body(notice: Notice) -> bytes:
    """Slack's incoming-webhook shape (`text`, mrkdwn) plus the event for programs."""
    return json.dumps({"text": f"*{notice.title}*\n{notice.text}", "event": notice.event,
                       "title": notice.title, "data": notice.data}, sort_keys=True).encode()


def email_message(notice: Notice, sender: str, to: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = f"[robolake] {notice.title}", sender, to
    message["X-Robolake-Event"] = notice.event
    message.set_content(f"{notice.text}\n\n{json.dumps(notice.data, indent=2, sort_keys=True)}")
    return message


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int = 25
    sender: str = "robolake@localhost"

    @classmethod
    def from_env(cls) -> Smtp | None:
        host = os.environ.get("ROBOLAKE_SMTP_HOST", "").strip()
        if not host:
            return None
        return cls(host, int(os.environ.get("ROBOLAKE_SMTP_PORT", "25")),
                   os.environ.get("ROBOLAKE_SMTP_FROM", "robolake@localhost"))

    def send(self, notice: Notice, to: str) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
            smtp.send_message(email_message(notice, self.sender, to))


class Notifier:
    """Sends notices to tenants' channels, each (notice, channel) once."""

    def __init__(self, db: Database, smtp: Smtp | None = None):
        self.db, self.smtp = db, smtp
        for schema in (UPLOADS_SCHEMA, WEBHOOKS_SCHEMA, _SCHEMA):  # the gateway may not have run
            self.db.create(schema)

    def set_email(self, tenant: str, email: str) -> None:
        if "@" not in email or any(c.isspace() for c in email):
            raise ValueError(f"email {email!r}: expected an address like name@example.com")
        self.db.execute("DELETE FROM tenant_emails WHERE tenant = ?", (tenant,))
        self.db.execute("INSERT INTO tenant_emails VALUES (?, ?)", (tenant, email))

    def tenants_of_robot_type(self, robot_type: str) -> list[str]:
        rows, _ = self.db.execute("SELECT DISTINCT tenant FROM uploads WHERE robot_type = ? "
                                  "ORDER BY tenant", (robot_type,))
        return [r[0] for r in rows]

    def tenant_of_landing_key(self, landing_key: str) -> list[str]:
        rows, _ = self.db.execute("SELECT DISTINCT tenant FROM uploads WHERE landing_key = ?",
                                  (landing_key,))
        return [r[0] for r in rows]

    def _channels(self, tenant: str) -> list[tuple[str, str, str]]:
        """(channel id, kind, target) of a tenant: its webhook and its email."""
        out = []
        hook = self.db.one("SELECT url, secret FROM tenant_webhooks WHERE tenant = ?", (tenant,))
        if hook:
            out.append((f"webhook:{tenant}", "webhook", hook[0]))
        mail = self.db.one("SELECT email FROM tenant_emails WHERE tenant = ?", (tenant,))
        if mail and self.smtp:
            out.append((f"email:{tenant}", "email", mail[0]))
        return out

    def _delivered(self, notice: Notice, channel: str) -> bool:
        return self.db.one("SELECT 1 FROM notification_deliveries WHERE notice_key = ? AND "
                           "channel = ?", (notice.key, channel)) is not None

    def _send(self, notice: Notice, tenant: str, kind: str, target: str) -> None:
        if kind == "email":
            self.smtp.send(notice, target)
            return
        secret = self.db.one("SELECT secret FROM tenant_webhooks WHERE tenant = ?", (tenant,))[0]
        body = webhook_body(notice)
        response = httpx.post(target, content=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Robolake-Event": notice.event,
            "X-Robolake-Signature": signature(secret, body)})
        response.raise_for_status()

    def notify(self, notice: Notice, tenants: list[str], kinds=("webhook", "email"),
               ops: bool = True) -> list[str]:
        """Deliver to each tenant's channels of these kinds (and ops' unless `ops` is False);
        the channels reached this time."""
        reached = []
        for tenant in dict.fromkeys([*tenants, *([OPS_TENANT] if ops else [])]):
            for channel, kind, target in self._channels(tenant):
                if kind not in kinds or self._delivered(notice, channel):
                    continue
                try:
                    self._send(notice, tenant, kind, target)
                except (httpx.HTTPError, OSError, smtplib.SMTPException) as exc:
                    log.warning("%s to %s: %s", notice.key, channel, type(exc).__name__)
                    continue
                self.db.execute("INSERT INTO notification_deliveries VALUES (?, ?, ?) "
                                "ON CONFLICT (notice_key, channel) DO NOTHING",
                                (notice.key, channel, time.time_ns()))
                reached.append(channel)
        return reached
