"""The platform API against a real Dagster webserver (GraphQL over HTTP) serving the
project's code location: dataset builds and training jobs launched with the caller's
identity in the run tags, runs read back with their materializations."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from gateway_fixtures import free_port, make_settings, start_gateway

from robolake.simulate import simulate_recording
from robolake.simulate.robots import RobotIdentity

REPO = Path(__file__).resolve().parents[1]
START_NS = int(datetime(2026, 11, 20, 9, 0, tzinfo=UTC).timestamp() * 1e9)
RUNS_BY_TAG = """
query($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) { ... on Runs { results { runId status } } }
}
"""

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    """`robolake ingest --through raw` of one recording (a finished run with
    materializations), then dagster-webserver on the same instance. Runs launched through
    GraphQL start at once (DefaultRunCoordinator: no daemon in the test)."""
    tmp = tmp_path_factory.mktemp("dagster")
    home, landing, lake = tmp / "home", tmp / "landing", tmp / "lake"
    for p in (home, landing, lake):
        p.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n"
        "  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ROBOLAKE_LANDING": str(landing),
           "ROBOLAKE_LAKE": str(lake), "ROBOLAKE_SPECS": str(REPO / "specs"),
           "ROBOLAKE_TRAINING_CONFIGS": str(REPO / "configs" / "training")}
    simulate_recording(landing, RobotIdentity("r-plat", "delivery", "eu-west"), START_NS, 4.0,
                       seed=2)
    subprocess.run([sys.executable, "-m", "robolake_assets.cli", "ingest", "--through", "raw"],
                   env=env, cwd=tmp, check=True, capture_output=True, timeout=300)
    port = free_port()
    web = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w",
         str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its code server and run workers share its process group
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        deadline = time.time() + 180
        while True:
            try:
                r = httpx.post(url, json={"query": "{ repositoriesOrError { __typename } }"})
                if "RepositoryConnection" in r.text:
                    break
            except httpx.HTTPError:
                pass
            assert web.poll() is None and time.time() < deadline, "dagster-webserver died"
            time.sleep(0.5)
        yield {"url": url, "env": env}
    finally:
        with_group = os.getpgid(web.pid)
        os.killpg(with_group, signal.SIGTERM)
        try:
            web.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            web.wait()
        time.sleep(0.5)
        try:
            os.killpg(with_group, signal.SIGKILL)  # run workers left behind
        except ProcessLookupError:
            pass


@pytest.fixture
def gw(tmp_path, dagster, monkeypatch):
    monkeypatch.setenv("ROBOLAKE_SPECS", dagster["env"]["ROBOLAKE_SPECS"])
    monkeypatch.setenv("ROBOLAKE_TRAINING_CONFIGS", dagster["env"]["ROBOLAKE_TRAINING_CONFIGS"])
    running = start_gateway(make_settings(tmp_path, dagster_graphql_url=dagster["url"]))
    yield running
    running.stop()


def test_dataset_build_and_training_are_launched_with_the_callers_identity(gw):
    key = gw.key("engineer", tenant="acme")
    key_id = key.split("_")[1]
    with gw.client(gw.token(key)) as c:
        r = c.post("/api/v1/datasets/builds", json={"name": "ego_motion_demo",
                                                    "version": "1.0.0"})
        assert r.status_code == 202, r.text
        build = r.json()
        assert build["job_name"] == "build_datasets"
        assert build["status"] in ("NOT_STARTED", "QUEUED", "STARTING", "STARTED")
        run = c.get(f"/api/v1/runs/{build['run_id']}").json()
        assert run["run_id"] == build["run_id"] and run["job_name"] == "build_datasets"
        assert run["asset_selection"] == [["datasets", "ego_motion_demo"]]
        assert run["tags"]["robolake/requested-by"] == f"acme/{key_id}"
        assert run["tags"]["robolake/dataset"] == "ego_motion_demo@1.0.0"
        assert run["tags"]["robolake/queue"] == "batch"  # the job's own tags are kept
        r = c.post("/api/v1/training/jobs", json={"config": "imu_gps_demo"})
        assert r.status_code == 202, r.text
        train = c.get(f"/api/v1/runs/{r.json()['run_id']}").json()
        assert train["job_name"] == "train_imu_gps_demo"
        assert train["tags"]["robolake/training-config"] == "imu_gps_demo"
        # model assets are partitioned by the dataset version the config trains on
        assert train["tags"]["dagster/partition"] == "1.0.0"
        assert train["tags"]["robolake/queue"] == "training"


def test_a_finished_run_lists_its_materializations(gw, dagster):
    found = httpx.post(dagster["url"], json={"query": RUNS_BY_TAG, "variables": {
        "tags": [{"key": "robolake/trigger", "value": "cli"}]}}).json()
    runs = found["data"]["runsOrError"]["results"]
    assert [r["status"] for r in runs] == ["SUCCESS"]
    with gw.client(gw.token(gw.key("auditor"))) as c:
        run = c.get(f"/api/v1/runs/{runs[0]['runId']}")
    assert run.status_code == 200, run.text
    body = run.json()
    assert body["status"] == "SUCCESS" and body["job_name"] == "ingest_through_raw"
    keys = {tuple(m["asset_key"]) for m in body["materializations"]}
    assert ("raw_uploads",) in keys
    assert {m["partition"] for m in body["materializations"]} == {"2026-11-20|delivery"}
    assert body["end_time"] >= body["start_time"] > 0


def test_platform_requests_are_refused_with_reasons(gw):
    engineer = gw.token(gw.key("engineer"))
    robot = gw.token(gw.key("robot"))
    with gw.client(engineer) as c:
        r = c.post("/api/v1/datasets/builds", json={"name": "ego_motion_demo",
                                                    "version": "9.9.9"})
        assert r.status_code == 409 and "declares version 1.0.0" in r.json()["detail"]
        r = c.post("/api/v1/datasets/builds", json={"name": "nope", "version": "1.0.0"})
        assert r.status_code == 404 and "no dataset spec named 'nope'" in r.json()["detail"]
        r = c.post("/api/v1/datasets/builds", json={"name": "ego_motion_demo",
                                                    "version": "latest"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "version"]
        r = c.post("/api/v1/training/jobs", json={"config": "missing"})
        assert r.status_code == 404 and "no training config named" in r.json()["detail"]
        r = c.get("/api/v1/runs/00000000-0000-0000-0000-000000000000")
        assert r.status_code == 404
        assert c.get("/api/v1/runs/not a run").status_code == 422
    with gw.client(robot) as c:
        r = c.post("/api/v1/training/jobs", json={"config": "imu_gps_demo"})
        assert r.status_code == 403


def test_dagster_unreachable_is_503_with_retry_after(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOLAKE_SPECS", str(REPO / "specs"))
    dead = f"http://127.0.0.1:{free_port()}/graphql"
    for url in (dead, None):
        gw = start_gateway(make_settings(tmp_path / str(bool(url)), dagster_graphql_url=url))
        try:
            with gw.client(gw.token(gw.key("engineer"))) as c:
                r = c.post("/api/v1/datasets/builds", json={"name": "ego_motion_demo",
                                                            "version": "1.0.0"})
            assert r.status_code == 503 and r.headers["retry-after"] == "10"
            assert ("unreachable" if url else "not configured") in r.json()["detail"]
        finally:
            gw.stop()
