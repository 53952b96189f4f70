"""`robolake metrics` (issue 17): the pipeline's KPIs scraped over HTTP on loopback from a
small lake and instance, and the Grafana dashboard charts only metrics that exist."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import dagster as dg
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from robolake import raw
from robolake.storage import open_store
from robolake_assets.metrics import registry

REPO = Path(__file__).resolve().parents[1]


def _scrape(reg) -> dict[tuple, float]:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=60) as r:
            text = r.read().decode()
    finally:
        server.shutdown()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_kpis_are_scraped_from_the_lake_and_instance(tmp_path):
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    def arrive(name: str, age_s: float) -> None:
        (landing / name).write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 64)
        os.utime(landing / name, (time.time() - age_s, time.time() - age_s))

    arrive("cut.mcap", 7200)  # quarantined by the raw layer: waits for nothing
    day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 7200))
    raw.ingest_partition(open_store(landing), open_store(lake), day, "unidentified")
    arrive("late.mcap", 600)  # not ingested yet: the cleaned layer is 10 minutes behind

    @dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="n")], tags={})
    def n():
        yield dg.Output(1)
        yield dg.AssetCheckResult(check_name="positive", passed=False)

    with dg.instance_for_test() as instance:
        reg = registry(str(landing), str(lake), instance)
        for _ in range(2):
            assert dg.materialize([n], instance=instance, raise_on_error=False,
                                  tags={"robolake/queue": "etl"}).success
        first = _scrape(reg)
        assert dg.materialize([n], instance=instance, raise_on_error=False,
                              tags={"robolake/queue": "etl"}).success
        metrics = _scrape(reg)
    failures = ("robolake_check_failures_total", (("asset", "n"), ("check", "positive")))
    runs = ("robolake_run_duration_seconds_count", (("queue", "etl"), ("status", "SUCCESS")))
    # counters over the whole history, read incrementally: never recounted, never dropped
    assert (first[failures], first[runs]) == (2, 2)
    assert (metrics[failures], metrics[runs]) == (3, 3)
    assert metrics[("robolake_uploads_total", (("status", "quarantined"),))] == 1
    assert metrics[("robolake_uploads_total", (("status", "accepted"),))] == 0
    assert metrics[("robolake_cleaned_messages_total", ())] == 0
    assert metrics[("robolake_landing_files_waiting", ())] == 1
    assert 590 < metrics[("robolake_cleaned_lag_seconds", ())] < 900


def test_dashboard_charts_exported_metrics():
    from robolake.metrics import lake_metrics  # noqa: F401 - the names below come from it

    dashboard = json.loads((REPO / "deploy" / "grafana" / "robolake.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"robolake_[a-z_]+", e)}
    exported = {"robolake_uploads_total", "robolake_cleaned_messages_total",
                "robolake_cleaned_bytes_total", "robolake_cleaning_removed_total",
                "robolake_cleaned_lag_seconds", "robolake_landing_files_waiting",
                "robolake_check_failures_total", "robolake_run_duration_seconds_sum",
                "robolake_run_duration_seconds_count"}
    assert used == exported
