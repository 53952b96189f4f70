"""Approval through the platform API: an admin approves a held training run over HTTP (the
gateway, served by uvicorn on loopback, reading the run through a real dagster-webserver's
GraphQL API); the approval lands in ops/approvals and in the audit log as the admin's key,
and the budget sensor's next tick lets Dagster's queue daemon start the run."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml
from gateway_fixtures import free_port, make_settings, start_gateway
from test_queue import LOCAL, MOCK_LAUNCHER, Queue

from robolake.costs import approvals as A
from robolake.costs import budgets as B
from robolake.costs import runs as C
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_sensors.budgets import GPU_HOURS_TAG, evaluate_budgets

pytestmark = pytest.mark.service
LOG = logging.getLogger("approval-api-test")
PERCEPTION = {C.TEAM_TAG: "perception", C.PROJECT_TAG: "models"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A Dagster instance on disk (the project's queue settings, a launcher that records
    launches), dagster-webserver on it, and the gateway pointed at its GraphQL API."""
    tmp = tmp_path_factory.mktemp("approval")
    home = tmp / "home"
    home.mkdir()
    config = {k: v for k, v in LOCAL.items() if k != "run_monitoring"}
    (home / "dagster.yaml").write_text(yaml.safe_dump({**config, "run_launcher": MOCK_LAUNCHER}))
    port = free_port()
    web = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "--empty-workspace",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "DAGSTER_HOME": str(home)}, cwd=tmp, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/graphql"
    gateway = None
    try:
        deadline = time.time() + 90
        while True:
            try:
                if httpx.post(url, json={"query": "{ version }"}).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert web.poll() is None and time.time() < deadline, "dagster-webserver died"
            time.sleep(0.3)
        gateway = start_gateway(make_settings(tmp, dagster_graphql_url=url))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield gateway, instance, tmp
    finally:
        if gateway is not None:
            gateway.stop()
        os.killpg(os.getpgid(web.pid), signal.SIGTERM)
        web.wait(timeout=20)


def test_admin_approves_a_held_run_through_the_api(platform, tmp_path, monkeypatch):
    gw, instance, _tmp = platform
    lake = open_store(gw.settings.lake)
    budgets_file = tmp_path / "budgets.yaml"
    budgets_file.write_text(yaml.safe_dump({"approval_gpu_hours": 8,
                                            "teams": {"perception": {"monthly_usd": 1e6}}}))
    monkeypatch.setenv(B.BUDGETS_ENV, str(budgets_file))
    queue = Queue(instance)
    try:
        big = queue.submit("train_big", {**PERCEPTION, GPU_HOURS_TAG: "20"})
        assert evaluate_budgets(instance, lake, LOG)["held"] == [big]
        assert queue.tick() == []  # held: the queue does not start it

        admin_key, admin = gw.keys.create("acme", "admin")
        engineer = gw.token(gw.key("engineer"))
        with gw.client(engineer) as c:
            refused = c.post(f"/api/v1/runs/{big}/approve")
        assert refused.status_code == 403
        assert "role 'engineer' may not do this" in refused.json()["detail"]
        with gw.client(gw.token(admin_key)) as c:
            ok = c.post(f"/api/v1/runs/{big}/approve")
            again = c.post(f"/api/v1/runs/{big}/approve")
            unknown = c.post("/api/v1/runs/0123456789abcdef/approve")
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert (body["run_id"], body["job_name"], body["held"], body["new"]) == (
            big, "train_big", "approval", True)
        assert body["approved_by"] == f"key:{admin.key_id}"
        assert again.status_code == 200 and again.json()["new"] is False
        assert unknown.status_code == 404

        [entry] = read_table(lake, "ops/audit", filters={"action": "approve"}).to_pylist()
        assert (entry["actor"], entry["role"], entry["target"]) == (
            f"key:{admin.key_id}", "admin", f"run:{big}")
        [row] = A.approvals_of(lake, [big])
        assert (row["approved_by"], row["held"], row["team"]) == (
            f"key:{admin.key_id}", "approval", "perception")

        # the budget sensor's next tick tags the run, and the queue daemon starts it
        tick = evaluate_budgets(instance, lake, LOG)
        assert tick["approved"] == [big] and tick["held"] == []
        tags = instance.get_run_by_id(big).tags
        assert tags[A.HOLD_TAG] == "approved"
        assert tags[A.APPROVED_TAG].startswith(f"key:{admin.key_id} ")
        assert queue.tick() == ["train_big"]
        # a run that already started cannot be approved (409, with the reason)
        with gw.client(gw.token(admin_key)) as c:
            late = c.post(f"/api/v1/runs/{big}/approve")
        assert late.status_code == 409
        assert late.json()["detail"] == f"run {big} is STARTING, not queued: nothing to approve"
    finally:
        queue.close()
