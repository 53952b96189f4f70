"""`robolake metrics`: a Prometheus endpoint with the pipeline's KPIs.

The lake's figures come from robolake/metrics.py; this adds what only the Dagster instance
knows: failed check evaluations per check, and run durations per queue (the run queues of
resources/pools.py: interactive, etl, training, batch; a run's steps use that queue's pools)
and status. Everything is read when Prometheus scrapes. Dashboard: deploy/grafana/robolake.json.
"""

from __future__ import annotations

import argparse

import dagster as dg
from prometheus_client.core import CounterMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from robolake.metrics import lake_metrics
from robolake.storage import open_store

RECENT_RUNS = 1000  # run durations over the latest runs
RECENT_CHECKS = 20000  # check evaluations scanned per scrape


def dagster_metrics(instance: dg.DagsterInstance) -> list:
    checks = CounterMetricFamily("robolake_check_failures", "Failed asset check evaluations "
                                 "(the latest ones)", labels=["asset", "check"])
    failed: dict[tuple[str, str], int] = {}
    for record in instance.get_event_records(
            dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION),
            limit=RECENT_CHECKS):
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        key = (evaluation.asset_key.to_user_string(), evaluation.check_name)
        failed[key] = failed.get(key, 0) + (not evaluation.passed)
    for (asset, check), n in sorted(failed.items()):
        checks.add_metric([asset, check], n)
    durations = SummaryMetricFamily("robolake_run_duration_seconds", "Run durations of "
                                    "finished runs, by queue and status",
                                    labels=["queue", "status"])
    sums: dict[tuple[str, str], list[float]] = {}
    for record in instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]),
            limit=RECENT_RUNS):
        if record.start_time and record.end_time:
            key = (record.dagster_run.tags.get("robolake/queue", "interactive"),
                   record.dagster_run.status.value)
            sums.setdefault(key, []).append(record.end_time - record.start_time)
    for (queue, status), values in sorted(sums.items()):
        durations.add_metric([queue, status], count_value=len(values), sum_value=sum(values))
    return [checks, durations]


class RobolakeCollector(Collector):
    def __init__(self, landing: str, lake: str, instance: dg.DagsterInstance | None):
        self.landing, self.lake, self.instance = landing, lake, instance

    def collect(self):
        yield from lake_metrics(open_store(self.landing), open_store(self.lake))
        if self.instance is not None:
            yield from dagster_metrics(self.instance)


def registry(landing: str, lake: str, instance: dg.DagsterInstance | None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(RobolakeCollector(landing, lake, instance))
    return reg


def serve_metrics(args: argparse.Namespace, settings) -> int:
    """`robolake metrics`: serve /metrics until interrupted."""
    from prometheus_client import start_http_server

    from robolake.settings import ensure_dagster_home

    ensure_dagster_home(settings)
    instance = dg.DagsterInstance.get()
    _server, thread = start_http_server(args.port, addr=args.host,
                                        registry=registry(settings.landing, settings.lake,
                                                          instance))
    print(f"metrics on http://{args.host}:{args.port}/metrics (Ctrl-C stops)")
    thread.join()
    return 0
