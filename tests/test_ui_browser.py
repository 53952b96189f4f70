"""The Dagster UI in a real browser: dagster-webserver on loopback, headless Debian Chromium.

The global asset graph names every layer (a screenshot of it is saved under the
test's tmp dir); each layer's page shows all its assets, the partitioned ones with
their partitions. The instance is configured by the shipped dagster.yaml as it is (no
first-visit dialog), the daily partitions start where an empty lake's do (a week back), the
automation sensor runs without anyone turning it on, and a run executed by the `robolake`
process shows under its job.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from robolake_partitions import RECENT_DAYS
from tests.conftest import require_service
from tests.test_postgres_instance import graphql, webserver

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ROBOT_TYPES = ["delivery", "husky"]


def _groups() -> dict[str, list[str]]:
    """Asset names by group (layer), from the Definitions: new layers are checked too."""
    from robolake_assets.definitions import defs

    graph = defs.get_repository_def().asset_graph
    groups: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    return {g: sorted(a) for g, a in groups.items()}


def _run_from_the_cli(instance: dg.DagsterInstance, lake: Path, monkeypatch) -> str:
    """A run executed in-process the way `robolake ingest` does (its instance links runs to
    their jobs): the maintenance job on an empty lake, the quickest job there is."""
    from robolake.settings import Settings
    from robolake_assets.definitions import build_definitions
    from robolake_assets.linked_runs import link_runs_to_jobs

    monkeypatch.setenv("ROBOLAKE_LAKE", str(lake))  # resources read it through EnvVar
    defs = build_definitions(Settings.from_env())
    result = defs.resolve_job_def("delta_maintenance").execute_in_process(
        instance=link_runs_to_jobs(instance))
    assert result.success
    return result.run_id


ROBOLAKE = {"repositoryName": "__repository__", "repositoryLocationName": "robolake"}


def _check_instance_state(url: str, run_id: str) -> None:
    """What the UI shows first (issue 17): no newsletter dialog, automation running, the CLI's
    run under its job."""
    data = graphql(url, """query($sensor: SensorSelector!, $job: PipelineSelector!) {
        shouldShowNux
        sensorOrError(sensorSelector: $sensor) { ... on Sensor { sensorState { status } } }
        pipelineOrError(params: $job) { ... on Pipeline { runs { runId } } } }""",
        {"sensor": {**ROBOLAKE, "sensorName": "default_automation_condition_sensor"},
         "job": {**ROBOLAKE, "pipelineName": "delta_maintenance"}})
    assert data["shouldShowNux"] is False
    assert data["sensorOrError"]["sensorState"]["status"] == "RUNNING"
    assert [r["runId"] for r in data["pipelineOrError"]["runs"]] == [run_id]


def _check_launch_feedback(url: str, env: dict[str, str]) -> str:
    """`robolake launch` says what `dagster job launch` does not: the run, its state, its page
    (no daemon yet: it stays queued). Returns the run id."""
    import datetime as dt
    import subprocess
    import sys

    key = f"{dt.datetime.now(dt.UTC).date()}|delivery"
    out = subprocess.run(
        [str(Path(sys.executable).parent / "robolake"), "launch", "ingest_through_raw",
         "--partition", key, "--url", url], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    run_id, state, job, partition, page = out.stdout.split()[1:]
    assert (state, job, partition, page) == (
        "QUEUED:", "ingest_through_raw", key, f"{url}/runs/{run_id}")
    run = graphql(url, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status "
                       "tags { key value } } } }", {"id": run_id})["runOrError"]
    assert run["status"] == "QUEUED"
    assert {"key": "dagster/partition/robot_type", "value": "delivery"} in run["tags"]
    return run_id


RUNS = """{ runsOrError { ... on Runs { results { runId status assetSelection { path }
           tags { key value } } } } }"""


def _check_daemon_cleans_the_launched_partition(url: str, env: dict[str, str],
                                                raw_run: str) -> None:
    """Finding 1 end to end: `dagster-daemon` (what `make ui` starts) runs the queued raw run
    as launched from the UI, then the automation sensor, on by default, starts the cleaning
    of that partition and it succeeds."""
    import signal
    import subprocess
    import sys
    import time

    from tests.test_postgres_instance import graphql as query

    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    cleaning: dict = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and cleaning.get("status") not in ("SUCCESS", "FAILURE"):
            runs = query(url, RUNS)["runsOrError"]["results"]
            cleaning = next((r for r in runs if {"path": ["cleaned_imu"]}
                             in (r["assetSelection"] or [])), {})
            time.sleep(2)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
    status = {r["runId"]: r["status"] for r in runs}
    assert status[raw_run] == "SUCCESS", status
    assert cleaning.get("status") == "SUCCESS", (cleaning, daemon.stderr.read()[-3000:])
    tags = {t["key"]: t["value"] for t in cleaning["tags"]}
    assert tags["dagster/sensor_name"] == "default_automation_condition_sensor", tags
    raw_tags = {t["key"]: t["value"] for t in next(r for r in runs
                                                   if r["runId"] == raw_run)["tags"]}
    assert tags["dagster/partition"] == raw_tags["dagster/partition"], (tags, raw_tags)


LINEAGE = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
    assetMaterializations(limit: 1) { metadataEntries { label
      ... on TableColumnLineageMetadataEntry { lineage { columnName
        columnDeps { assetKey { path } columnName } } } } } } } }"""


def _check_governance_on_the_asset_page(p, url: str, screenshot: Path) -> None:
    """Issue 13: a cleaned table's page shows its owner, its classification and each
    column's classification, description and source columns; the materialization the daemon
    just made carries `dagster/column_lineage` (drawn as a graph by Dagster+ only)."""
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1600, "height": 3000})
        page.goto(f"{url}/assets/cleaned_aligned_frames", wait_until="domcontentloaded")
        page.get_by_text("(from cleaned/imu.ax, cleaned/imu.ts_ns)").first.wait_for(timeout=60_000)
        page.screenshot(path=str(screenshot), full_page=True)
        rows = {r.split("\t")[0].split("\n")[0]: r for r in
                page.locator("table tr").all_inner_texts()}
        sidebar = page.inner_text("body")
    finally:
        browser.close()
    assert "Owners\nperception" in sidebar and "classification: restricted" in sidebar
    assert "classification: restricted" in rows["gps_lat"], rows["gps_lat"]
    assert "[restricted] Latitude" in rows["gps_lat"]
    assert "classification: internal" in rows["imu_ax"]
    assert "(from cleaned/imu.ax, cleaned/imu.ts_ns)" in rows["imu_ax"]
    entries = graphql(url, LINEAGE, {"key": {"path": ["cleaned_aligned_frames"]}})[
        "assetNodeOrError"]["assetMaterializations"][0]["metadataEntries"]
    lineage = {c["columnName"]: c["columnDeps"] for e in entries
               if e["label"] == "dagster/column_lineage" for c in e["lineage"]}
    assert lineage["imu_ax"] == [{"assetKey": {"path": ["cleaned_imu"]}, "columnName": c}
                                 for c in ("ax", "ts_ns")]
    assert screenshot.stat().st_size > 20_000


def test_asset_graph_shows_every_layer_with_partitions(tmp_path, monkeypatch):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require_service(False, f"playwright not installed: {exc}")
    require_service(CHROMIUM.exists(), f"{CHROMIUM} missing; run scripts/install-services.sh")

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())  # as shipped
    env = {**os.environ, "DAGSTER_HOME": str(home), "ROBOLAKE_LAKE": str(tmp_path / "lake"),
           "ROBOLAKE_LANDING": str(tmp_path / "landing")}
    for name in ("ROBOLAKE_DEPLOYMENT", "ROBOLAKE_PARTITIONS_START"):
        env.pop(name, None)  # the laptop's defaults: partitions from the lake's first date
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("robot_type", ROBOT_TYPES)
        maintenance_run = _run_from_the_cli(instance, tmp_path / "lake", monkeypatch)
    # an empty lake: from a week ago to today (end_offset=1), per robot type
    total = (RECENT_DAYS + 1) * len(ROBOT_TYPES)
    groups = _groups()
    assert {"raw", "cleaned", "features", "datasets", "models"} <= set(groups)

    screenshot = tmp_path / "asset-graph.png"
    seen: dict[str, str] = {}
    with webserver(env) as url, sync_playwright() as p:
        _check_instance_state(url, maintenance_run)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 2400})
            page.goto(f"{url}/asset-groups", wait_until="domcontentloaded")
            for group in groups:  # the global graph names every layer
                page.locator("foreignObject").filter(has_text=group).first.wait_for(
                    timeout=60_000)
            page.screenshot(path=str(screenshot), full_page=True)
            for group, assets in groups.items():
                # each group's own page lays its assets out expanded
                page.goto(f"{url}/locations/robolake/asset-groups/{group}",
                          wait_until="domcontentloaded")
                nodes = page.locator("foreignObject")
                for _ in range(60):
                    # a node shows the last part of its key (datasets/x shows "x")
                    texts = [nodes.nth(i).text_content() or "" for i in range(nodes.count())]
                    seen.update({a: t for a in assets for t in texts
                                 if t.startswith(a.split("/")[-1] + "Latest")})
                    if all(a in seen and "Loading" not in seen[a] for a in assets):
                        break
                    page.wait_for_timeout(500)
        finally:
            browser.close()
        raw_run = _check_launch_feedback(url, env)  # after the graph: its run shows there
        _check_daemon_cleans_the_launched_partition(url, env, raw_run)
        _check_governance_on_the_asset_page(p, url, tmp_path / "aligned-frames.png")
    found = seen

    missing = sorted({a for g in groups.values() for a in g} - set(found))
    assert not missing, f"assets not in the graph: {missing}"
    for asset in (a for g in ("raw", "cleaned", "features") for a in groups[g]):
        # each partitioned asset shows its partitions: fill rate and total count
        text = found[asset]
        assert "Partitions" in text and "0% filled" in text, (asset, text)
        assert f"{total:,}" in text, (asset, total, text)
    for asset in groups["datasets"]:
        # not partitioned: no fill rate, and nothing materialized yet
        assert "filled" not in found[asset] and "Never materialized" in found[asset], asset
    # models are partitioned by dataset version: none is registered in this instance yet,
    # so they show no (date, robot type) total
    for asset in groups["models"]:
        assert f"{total:,}" not in found[asset], asset
    assert screenshot.stat().st_size > 20_000  # saved under the test's tmp dir
