"""Budgets: alerts at 70/85/95 % to a real webhook receiver on loopback, recorded once in
ops/alerts, and at 100 % queued runs held by Dagster's own queue daemon (configured from
dagster.yaml) until an admin approves them or the budget is raised."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from test_queue import Queue, _instance

from robolake.costs import budgets as B
from robolake.costs import runs as C
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_assets.cli_costs import approve_run
from robolake_resources.pools import HOLD_TAG
from robolake_sensors.budgets import evaluate_budgets

LOG = logging.getLogger("budgets-test")
MONTH = dt.datetime.now(dt.UTC).strftime("%Y-%m")
PERCEPTION = {C.TEAM_TAG: "perception", C.PROJECT_TAG: "models"}


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"],
                             "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/perception", received
    server.shutdown()


def write_budgets(path, perception_usd: float) -> None:
    path.write_text(yaml.safe_dump({
        "thresholds": {"info": 0.7, "warning": 0.85, "alert": 0.95, "hold": 1.0},
        "teams": {"perception": {"monthly_usd": perception_usd,
                                 "webhook_env": "ROBOLAKE_WEBHOOK_TEST_PERCEPTION"},
                  "data-platform": {"monthly_usd": 1000}},
        "projects": {"models": {"monthly_usd": 1000}}}))


def spend(lake, run_id: str, usd: float, team: str = "perception") -> None:
    now = dt.datetime.now(dt.UTC)
    ns = int(now.timestamp() * 1e9)
    C.record_run_costs(lake, run_id, [{
        "run_id": run_id, "step_key": "model", "kind": "compute", "job_name": "train_x",
        "asset": "model", "partition": "", "team": team, "project": "models",
        "pool": "gpu_standard", "capacity": "on-demand", "instance_type": "g5.2xlarge",
        "start_ns": ns, "end_ns": ns, "duration_s": 1.0, "share": 1.0, "quantity": 1.0,
        "usd": usd, "month": MONTH, "recorded_ns": ns}])


def test_alerts_once_per_threshold_then_hold_approve_and_release(tmp_path, monkeypatch,
                                                                 webhook):
    url, received = webhook
    budgets_file = tmp_path / "budgets.yaml"
    write_budgets(budgets_file, 10.0)
    monkeypatch.setenv(B.BUDGETS_ENV, str(budgets_file))
    monkeypatch.setenv("ROBOLAKE_WEBHOOK_TEST_PERCEPTION", url)
    lake = open_store(tmp_path / "lake")
    with _instance() as instance:
        queue = Queue(instance)
        try:
            # 72 %: info, posted once however often the sensor ticks
            spend(lake, "r1", 4.0)
            spend(lake, "r2", 3.2)
            first = evaluate_budgets(instance, lake, LOG)
            assert first["alerts"] == [f"{MONTH}:team:perception:info"]
            evaluate_budgets(instance, lake, LOG)
            assert len(received) == 1
            msg = received[0]
            assert msg["path"] == "/hooks/perception" and msg["type"] == "application/json"
            assert "Budget info: team perception is at 72%" in msg["json"]["text"]
            assert msg["json"]["blocks"][0]["text"]["text"] == msg["json"]["text"]
            # queued runs count too: 2 x the job's average run (3.6) -> 144 %
            held = [queue.submit("train_x", PERCEPTION) for _ in range(2)]
            critical = queue.submit("train_x", {**PERCEPTION, C.CRITICAL_TAG: "true"})
            other = queue.submit("etl_y", {C.TEAM_TAG: "data-platform", C.PROJECT_TAG: "x"})
            tick = evaluate_budgets(instance, lake, LOG)
            status = {s.name: s for s in tick["statuses"]}["perception"]
            assert status.queued_usd == pytest.approx(3 * 3.6)  # critical runs cost too
            assert sorted(tick["alerts"]) == sorted(
                f"{MONTH}:team:perception:{lvl}" for lvl in ("warning", "alert", "hold"))
            assert sorted(tick["held"]) == sorted(held)
            assert [m["json"]["robolake"]["level"] for m in received] == [
                "info", "warning", "alert", "hold"]
            # Dagster's queue daemon starts the critical and the other team's run only
            launched = queue.tick() + queue.tick()
            assert sorted(launched) == ["etl_y", "train_x"]
            assert instance.get_run_by_id(critical).status.value == "STARTING"
            assert instance.get_run_by_id(other).status.value == "STARTING"
            assert {instance.get_run_by_id(r).status.value for r in held} == {"QUEUED"}
            # an admin approves one: it goes; the other stays held
            assert "may start now" in approve_run(instance, held[0], "admin", lake)
            [entry] = read_table(lake, "ops/audit", filters={"action": "approve"}).to_pylist()
            assert (entry["target"], entry["actor"]) == (f"run:{held[0]}", "user:admin")
            assert evaluate_budgets(instance, lake, LOG)["held"] == []
            assert queue.tick() == ["train_x"]
            assert instance.get_run_by_id(held[1]).tags[HOLD_TAG] == "budget"
            # the budget is raised: the hold is lifted and the run starts
            write_budgets(budgets_file, 100.0)
            lifted = evaluate_budgets(instance, lake, LOG)
            assert lifted["released"] == [held[1]] and lifted["alerts"] == []
            assert queue.tick() == ["train_x"]
            with pytest.raises(ValueError, match="not queued: nothing to approve"):
                approve_run(instance, held[1], "admin", lake)
        finally:
            queue.close()
    alerts = read_table(lake, B.ALERTS).to_pylist()
    assert sorted(a["level"] for a in alerts) == ["alert", "hold", "info", "warning"]
    assert len(received) == 4  # one message per threshold and month


def test_a_bad_budgets_file_names_the_field(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"thresholds": {"info": 0.9, "warning": 0.8},
                                    "teams": {"x": {"monthly_usd": -1}}}))
    with pytest.raises(B.BudgetsError) as err:
        B.load_budgets(path)
    assert f"{path}: thresholds: expected info < warning < alert <= hold" in str(err.value)
    assert f"{path}: teams.x.monthly_usd" in str(err.value)
    budgets = B.Budgets.model_validate({"owners": {"train_*": {"team": "t", "project": "p"}}})
    assert budgets.owner_tags("train_lidar") == {C.TEAM_TAG: "t", C.PROJECT_TAG: "p"}
    assert budgets.owner_tags("build_datasets") == {}


def test_expensive_gpu_training_waits_for_approval(tmp_path, monkeypatch):
    from robolake_sensors.budgets import GPU_HOURS_TAG

    budgets_file = tmp_path / "budgets.yaml"
    budgets_file.write_text(yaml.safe_dump({"approval_gpu_hours": 8,
                                            "teams": {"perception": {"monthly_usd": 1e6}}}))
    monkeypatch.setenv(B.BUDGETS_ENV, str(budgets_file))
    lake = open_store(tmp_path / "lake")
    # train_big's last run used 12 node-hours of gpu_standard (1 GPU each): 12 GPU-hours
    spend(lake, "old-big", 14.5)
    rows = C.read_costs(lake)
    rows[0]["quantity"], rows[0]["job_name"] = 12.0, "train_big"
    C.record_run_costs(lake, "old-big", rows)
    with _instance() as instance:
        queue = Queue(instance)
        try:
            big = queue.submit("train_big", {**PERCEPTION, C.CRITICAL_TAG: "true"})
            tagged = queue.submit("train_small", {**PERCEPTION, GPU_HOURS_TAG: "20"})
            small = queue.submit("train_small", {**PERCEPTION, GPU_HOURS_TAG: "2"})
            tick = evaluate_budgets(instance, lake, LOG)
            assert sorted(tick["held"]) == sorted([big, tagged])
            assert {instance.get_run_by_id(r).tags[HOLD_TAG] for r in (big, tagged)} == {
                "approval"}
            assert queue.tick() == ["train_small"]  # only the cheap one starts
            assert instance.get_run_by_id(small).status.value == "STARTING"
            approve_run(instance, big, "admin", lake)
            assert evaluate_budgets(instance, lake, LOG)["held"] == []
            assert queue.tick() == ["train_big"]
            assert instance.get_run_by_id(tagged).status.value == "QUEUED"
        finally:
            queue.close()
