"""The Dagster UI in a real browser: dagster-webserver on loopback, headless Debian Chromium.

Every layer's assets appear in the global asset graph with their partitions, and
a screenshot of it is saved under the test's tmp dir.
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
    from partitions import daily_partitions

    total = len(daily_partitions.get_partition_keys()) * len(ROBOT_TYPES)
    groups = _groups()
    assert {"raw", "cleaned"} <= set(groups)

    screenshot = tmp_path / "asset-graph.png"
    with webserver(env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 2400})
            page.goto(f"{url}/asset-groups", wait_until="domcontentloaded")
            nodes = page.locator("foreignObject")
            for group in groups:
                page.locator("foreignObject").filter(has_text=group).first.wait_for(
                    timeout=60_000)

            seen: dict[str, str] = {}

            def shown() -> dict[str, str]:
                # the graph renders only nodes in view: remember every asset node seen
                texts = [nodes.nth(i).text_content() or "" for i in range(nodes.count())]
                seen.update({a: t for a in (x for g in groups.values() for x in g)
                             for t in texts if t.startswith(a + "Latest")})
                return seen

            for group, assets in groups.items():
                # a collapsed group node shows its name and asset count: click to expand
                for _ in range(3):
                    if all(a in shown() for a in assets):
                        break
                    label = page.locator("foreignObject").get_by_text(group, exact=True)
                    if label.count():
                        label.last.click()
                    for _ in range(20):  # the graph re-lays out; wait before clicking again
                        page.wait_for_timeout(500)
                        if all(a in shown() for a in assets):
                            break
            page.wait_for_timeout(1000)
            page.screenshot(path=str(screenshot), full_page=True)
            found = shown()
        finally:
            browser.close()

    missing = sorted({a for g in groups.values() for a in g} - set(found))
    assert not missing, f"assets not in the graph: {missing}"
    for asset, text in found.items():
        # each partitioned asset shows its partitions: fill rate and total count
        assert "Partitions" in text and "0% filled" in text, (asset, text)
        assert f"{total:,}" in text, (asset, total, text)
    assert screenshot.stat().st_size > 20_000  # saved under the test's tmp dir
