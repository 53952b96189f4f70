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

FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]


class InstanceTotals:
    """Running totals over the instance's finished runs, read incrementally: each scrape reads
    only the runs finished since the last one (their durations and failed check evaluations),
    so the counters never drop (a restart of `robolake metrics` is a counter reset, which
    Prometheus expects). Storage ids are per run on the default SQLite storage, so the unit
    read is a run, not an event cursor."""

    def __init__(self) -> None:
        self.runs_seen: set[str] = set()
        self.runs_since = None
        self.failed: dict[tuple[str, str], int] = {}
        self.durations: dict[tuple[str, str], list] = {}  # [count, sum]

    def update(self, instance: dg.DagsterInstance) -> None:
        for record in instance.get_run_records(
                dg.RunsFilter(statuses=FINISHED, updated_after=self.runs_since),
                order_by="update_timestamp", ascending=True):
            run = record.dagster_run
            if self.runs_since is None or record.update_timestamp > self.runs_since:
                self.runs_since = record.update_timestamp
            if run.run_id in self.runs_seen:  # `updated_after` overlaps by one timestamp
                continue
            self.runs_seen.add(run.run_id)
            self._count_checks(instance, run.run_id)
            if record.start_time and record.end_time:
                key = (run.tags.get("robolake/queue", "interactive"), run.status.value)
                total = self.durations.setdefault(key, [0, 0.0])
                total[0] += 1
                total[1] += record.end_time - record.start_time

    def _count_checks(self, instance: dg.DagsterInstance, run_id: str) -> None:
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data
            key = (evaluation.asset_key.to_user_string(), evaluation.check_name)
            self.failed[key] = self.failed.get(key, 0) + (not evaluation.passed)

    def families(self) -> list:
        checks = CounterMetricFamily("robolake_check_failures", "Failed asset check "
                                     "evaluations", labels=["asset", "check"])
        for (asset, check), n in sorted(self.failed.items()):
            checks.add_metric([asset, check], n)
        durations = SummaryMetricFamily("robolake_run_duration_seconds", "Run durations of "
                                        "finished runs, by queue and status",
                                        labels=["queue", "status"])
        for (queue, status), (count, total) in sorted(self.durations.items()):
            durations.add_metric([queue, status], count_value=count, sum_value=total)
        return [checks, durations]


class RobolakeCollector(Collector):
    def __init__(self, landing: str, lake: str, instance: dg.DagsterInstance | None):
        self.landing, self.lake, self.instance = landing, lake, instance
        self.totals = InstanceTotals()

    def collect(self):
        yield from lake_metrics(open_store(self.landing), open_store(self.lake))
        if self.instance is not None:
            self.totals.update(self.instance)
            yield from self.totals.families()


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
