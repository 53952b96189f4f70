"""The Dagster UI in a real browser: dagster-webserver on loopback, headless Debian Chromium.

The global asset graph names every layer (a screenshot of it is saved under the
test's tmp dir); each layer's page shows all its assets, the partitioned ones with
their partitions.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from tests.conftest import require_service
from tests.test_postgres_instance import webserver

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


def test_asset_graph_shows_every_layer_with_partitions(tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        require_service(False, f"playwright not installed: {exc}")
    require_service(CHROMIUM.exists(), f"{CHROMIUM} missing; run scripts/install-services.sh")

    home = tmp_path / "home"
    home.mkdir()
    # the project's instance config, without the first-visit newsletter dialog
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text()
                                       + "\nnux:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "ROBOLAKE_LAKE": str(tmp_path / "lake"),
           "ROBOLAKE_LANDING": str(tmp_path / "landing")}
    env.pop("ROBOLAKE_DEPLOYMENT", None)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("robot_type", ROBOT_TYPES)
    from robolake_partitions import daily_partitions

    total = len(daily_partitions.get_partition_keys()) * len(ROBOT_TYPES)
    groups = _groups()
    assert {"raw", "cleaned", "features", "datasets", "models"} <= set(groups)

    screenshot = tmp_path / "asset-graph.png"
    seen: dict[str, str] = {}
    with webserver(env) as url, sync_playwright() as p:
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
