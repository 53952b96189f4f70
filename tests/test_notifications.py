"""Notifications (issue 17): failed runs, failed blocking checks and freshness breaches reach
a tenant's webhook (Slack-compatible JSON, signed) and email (a real SMTP server, aiosmtpd, on
loopback), once each; upload verdicts carry Slack's `text` too (tests/test_gateway_webhooks)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import time
from email import message_from_bytes

import dagster as dg
import pytest

from robolake.gateway.db import Database
from robolake.gateway.uploads import Uploads
from robolake.gateway.webhooks import Webhooks
from robolake.notify import Notifier
from tests.conftest import require_service
from tests.test_gateway_webhooks import Receiver


class Mailbox:
    """aiosmtpd on 127.0.0.1: every message it accepts."""

    def __init__(self):
        try:
            from aiosmtpd.controller import Controller
        except ImportError as exc:
            require_service(False, f"aiosmtpd not installed: {exc}")
        self.messages: list = []
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd
                box.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture
def channels(tmp_path, monkeypatch):
    """Tenant acme (uploads of robot type delivery) with a webhook and an email address."""
    state = tmp_path / "gateway"
    state.mkdir()
    monkeypatch.setenv("ROBOLAKE_GATEWAY_STATE", str(state))
    monkeypatch.delenv("ROBOLAKE_GATEWAY_DB", raising=False)
    receiver, mailbox = Receiver(), Mailbox()
    monkeypatch.setenv("ROBOLAKE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("ROBOLAKE_SMTP_PORT", str(mailbox.port))
    db = Database(state / "gateway.db")
    uploads = Uploads(db, str(tmp_path / "landing"), b"k" * 32)
    secret = Webhooks(db, uploads, str(tmp_path / "lake")).set("acme", receiver.url)
    from robolake_assets.cli import main

    assert main(["notify-email", "acme", "ops@acme.example"]) == 0  # into the same database
    db.execute("INSERT INTO uploads (upload_id, tenant, key_id, robot_id, robot_type, region, "
               "file_name, size_bytes, part_size, part_count, landing_key, backend, metadata, "
               "status, created_ns) VALUES ('u1', 'acme', 'k1', 'r-1', 'delivery', 'eu-west', "
               "'cut.mcap', 72, 72, 1, 'cut.mcap', 'local', '{}', 'completed', 1)")
    yield receiver, mailbox, secret, db
    receiver.stop()
    mailbox.controller.stop()


def _signed(receiver: Receiver, secret: str) -> list[dict]:
    out = []
    for headers, body in receiver.received:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Robolake-Signature"] == expected
        out.append(json.loads(body))
    return out


def test_breaches_and_failed_runs_reach_webhook_and_email(tmp_path, monkeypatch, channels):
    from robolake.settings import Settings
    from robolake_assets.definitions import build_definitions
    from robolake_sensors.notifications import notify_failed_checks, notify_failed_runs

    receiver, mailbox, secret, db = channels
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir(exist_ok=True)
    stale = landing / "cut.mcap"  # waiting for the cleaned layer for 2 h: the SLA is 1 h
    stale.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 64)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    monkeypatch.setenv("ROBOLAKE_LAKE", str(lake))
    monkeypatch.setenv("ROBOLAKE_LANDING", str(landing))
    defs = build_definitions(Settings.from_env())
    with dg.instance_for_test() as instance:
        defs.resolve_job_def("cleaned_freshness").execute_in_process(instance=instance)
        for _ in range(2):  # a second evaluation from scratch sends nothing again
            with dg.build_sensor_context(instance=instance) as ctx:
                notify_failed_checks.evaluate_tick(ctx)
        # a run that fails (its lake cannot be opened), requested by acme's key
        monkeypatch.setenv("ROBOLAKE_LAKE", "not-a-uri://x")
        failed = build_definitions(Settings.from_env()).resolve_job_def(
            "cleaned_freshness").execute_in_process(
            instance=instance, raise_on_error=False, tags={"robolake/requested-by": "acme/k1"})
        assert not failed.success
        [record] = instance.get_records_for_run(
            failed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
        failure = record.event_log_entry.dagster_event
        notify_failed_runs(dg.build_run_status_sensor_context(
            sensor_name="notify_failed_runs", dagster_instance=instance,
            dagster_run=failed.dagster_run, dagster_event=failure).for_run_failure())

        # its verdict (the raw layer quarantines the cut file) is emailed to acme, once
        from robolake import raw
        from robolake.storage import open_store

        raw.ingest_landing(open_store(landing), open_store(lake))
        webhooks = Webhooks(db, Uploads(db, str(landing), b"k" * 32), str(lake))
        assert [asyncio.run(webhooks.email_once()) for _ in range(2)] == [1, 0]

    hooks = _signed(receiver, secret)
    assert [h["event"] for h in hooks] == ["freshness.breached", "run.failed"]
    breach, run = hooks
    assert breach["text"].startswith("*The cleaned layer is behind the landing zone*\n1 file(s) "
                                     "waiting, the oldest (cut.mcap) for 7")
    assert breach["data"]["oldest_file"] == "cut.mcap" and breach["data"]["max_lag_s"] == 3600
    assert run["title"] == "Run of cleaned_freshness failed"
    assert run["data"]["run_id"] == failed.run_id and run["text"].startswith("*Run of")
    mails = [(to, m["Subject"], m["X-Robolake-Event"]) for to, m in mailbox.messages]
    assert mails == [
        (["ops@acme.example"], "[robolake] The cleaned layer is behind the landing zone",
         "freshness.breached"),
        (["ops@acme.example"], "[robolake] Run of cleaned_freshness failed", "run.failed"),
        (["ops@acme.example"], "[robolake] Upload cut.mcap: quarantined", "upload.verdict")]


def test_email_address_is_checked(tmp_path):
    with pytest.raises(ValueError, match="expected an address like"):
        Notifier(Database(tmp_path / "g.db")).set_email("acme", "not an address")
