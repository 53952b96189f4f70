"""Pipeline KPIs for operators, in Prometheus's exposition format (`robolake metrics`).

Read from the lake when Prometheus scrapes (no state of its own): uploads by verdict,
messages and bytes that reached the cleaned layer, the lag from the landing zone to the
cleaned layer (the freshness SLA's figure), rows removed by each cleaning rule. The Dagster
side (failed check evaluations, run durations per pool) is added by
robolake_assets/metrics.py; `deploy/grafana/robolake.json` charts all of them.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from robolake import cleaned, contract, raw
from robolake.freshness import cleaned_lag
from robolake.storage import Store
from robolake.tables import read_table

REMOVALS = ("imu_duplicates", "imu_outliers", "gps_duplicates", "gps_invalid",
            "lidar_duplicates", "lidar_points_far", "camera_duplicates")


def lake_metrics(landing: Store, lake: Store) -> list:
    """The metric families of the lake's state now."""
    uploads = read_table(lake, raw.RAW_UPLOADS,
                         columns=["upload_id", "status", "size_bytes", "message_count"])
    rows = uploads.to_pylist() if uploads is not None else []
    by_status = CounterMetricFamily("robolake_uploads", "Uploads indexed, by verdict",
                                    labels=["status"])
    for status in contract.STATUSES:
        by_status.add_metric([status], sum(r["status"] == status for r in rows))
    reports = read_table(lake, cleaned.TABLES["report"])
    reported = reports.to_pylist() if reports is not None else []
    done = {r["upload_id"] for r in reported}
    cleaned_rows = [r for r in rows if r["upload_id"] in done]
    messages = CounterMetricFamily("robolake_cleaned_messages", "Messages of the uploads "
                                   "the cleaned layer has reported on")
    messages.add_metric([], sum(r["message_count"] for r in cleaned_rows))
    size = CounterMetricFamily("robolake_cleaned_bytes", "Bytes of the uploads the cleaned "
                               "layer has reported on")
    size.add_metric([], sum(r["size_bytes"] for r in {r["upload_id"]: r
                                                      for r in cleaned_rows}.values()))
    removed = CounterMetricFamily("robolake_cleaning_removed", "Rows removed by each "
                                  "cleaning rule", labels=["rule"])
    for rule in REMOVALS:
        removed.add_metric([rule], sum(r.get(rule) or 0 for r in reported))
    lag = cleaned_lag(landing, lake)
    lag_s = GaugeMetricFamily("robolake_cleaned_lag_seconds", "Age of the oldest landing "
                              "file the cleaned layer has not got yet (0: none waits)")
    lag_s.add_metric([], lag.seconds)
    waiting = GaugeMetricFamily("robolake_landing_files_waiting", "Landing files not in "
                                "the cleaned layer yet")
    waiting.add_metric([], lag.waiting)
    return [by_status, messages, size, removed, lag_s, waiting]
