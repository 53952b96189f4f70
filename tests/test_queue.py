"""Run queue: priorities and limits hold, and a backfill never starves an interactive run.

Runs are dequeued by Dagster's own `QueuedRunCoordinatorDaemon` on an instance
configured from the project's dagster.yaml; only the run launcher is replaced
by one that records launches instead of starting processes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dagster import DagsterEvent, DagsterEventType, DagsterRunStatus
from dagster._core.instance_for_test import instance_for_test
from dagster._core.remote_origin import (
    RegisteredCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from robolake_resources import pools

REPO = Path(__file__).resolve().parents[1]
LOCAL = yaml.safe_load((REPO / "dagster.yaml").read_text())
MOCK_LAUNCHER = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}


def _instance(max_runs: int | None = None):
    config = {k: v for k, v in LOCAL.items() if k not in ("run_monitoring",)}
    config["run_launcher"] = MOCK_LAUNCHER
    if max_runs is not None:
        config["concurrency"] = {**config["concurrency"],
                                 "runs": {**config["concurrency"]["runs"],
                                          "max_concurrent_runs": max_runs}}
    return instance_for_test(overrides=config)


class Queue:
    def __init__(self, instance):
        self.instance = instance
        self.daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        self._ctx = create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance)
        self.workspace = self._ctx.__enter__()

    def close(self):
        self._ctx.__exit__(None, None, None)

    def submit(self, name: str, tags: dict | None = None) -> str:
        origin = RemoteJobOrigin(RemoteRepositoryOrigin(
            RegisteredCodeLocationOrigin("robolake"), "__repository__"), name)
        run = create_run_for_test(self.instance, job_name=name, status=DagsterRunStatus.QUEUED,
                                  tags=tags or {}, remote_job_origin=origin)
        return run.run_id

    def tick(self) -> list[str]:
        """One daemon iteration; the job names of the runs it launched."""
        before = set(self.instance.run_launcher._launched_run_ids)
        list(self.daemon.run_iteration(self.workspace))
        launched = [r for r in self.instance.run_launcher.queue() if r.run_id not in before]
        return [r.job_name for r in launched]

    def finish(self, job_name: str) -> None:
        [run] = [r for r in self.instance.get_runs()
                 if r.job_name == job_name and r.status == DagsterRunStatus.STARTING][:1]
        event = DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value,
                             job_name=run.job_name, message="done")
        self.instance.report_dagster_event(event, run_id=run.run_id)

    def in_progress(self) -> list[str]:
        return [r.job_name for r in self.instance.get_runs()
                if r.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)]


@pytest.fixture
def queue():
    with _instance() as instance:
        q = Queue(instance)
        yield q
        q.close()


def test_higher_priority_is_dequeued_first():
    with _instance(max_runs=1) as instance:
        q = Queue(instance)
        try:
            # submitted lowest first: the queue must still launch highest first
            for name in ("batch", "etl", "training", "interactive"):
                q.submit(name, None if name == "interactive" else pools.queue_tags(name))
            order = []
            for _ in range(4):
                launched = q.tick()
                assert len(launched) == 1
                order += launched
                q.finish(launched[0])
            assert order == ["interactive", "training", "etl", "batch"]
        finally:
            q.close()


def test_a_backfill_of_hundreds_of_partitions_does_not_starve_an_interactive_run(queue):
    for i in range(300):
        queue.submit(f"backfill_{i:03d}", {"dagster/backfill": "bf1",
                                           "dagster/partition": f"2026-01-{i % 28 + 1:02d}"})
    for i in range(30):
        queue.submit(f"etl_{i:02d}", {**pools.queue_tags("etl"),
                                      "robolake/trigger": "new_uploads_sensor"})
    queue.submit("interactive_1")  # a person materializes one asset from the UI

    launched = queue.tick()
    # 5 slots: the backfill holds at most 2, ETL at most 2, the interactive run gets one
    assert "interactive_1" in launched
    assert sum(n.startswith("backfill_") for n in launched) == pools.BACKFILL_LIMIT["local"]
    assert sum(n.startswith("etl_") for n in launched) == 2
    assert len(launched) == pools.MAX_CONCURRENT_RUNS["local"]
    assert queue.tick() == []  # full: nothing more until a run ends

    # an ETL run ends; a second interactive run, queued behind 298 backfill runs of the
    # same priority, takes the slot: the backfill is at its cap
    queue.submit("interactive_2")
    queue.finish("etl_00")
    assert queue.tick() == ["interactive_2"]

    # the backfill keeps moving, never above its cap
    for _ in range(5):
        done = next(n for n in queue.in_progress() if n.startswith("backfill_"))
        queue.finish(done)
        launched = queue.tick()
        assert len(launched) == 1 and launched[0].startswith("backfill_")
        assert sum(n.startswith("backfill_") for n in queue.in_progress()) == 2


def test_queue_caps_hold(queue):
    for i in range(5):
        queue.submit(f"train_{i}", pools.queue_tags("training"))
        queue.submit(f"batch_{i}", pools.queue_tags("batch"))
    launched = queue.tick()
    assert sorted(launched) == ["batch_0", "train_0"]  # caps: training 1, batch 1
    queue.finish("train_0")
    assert queue.tick() == ["train_1"]


def _limits(entries):
    return sorted((e["key"], str(e.get("value")), e["limit"]) for e in entries)


def test_instance_configs_match_the_queue_policy_in_code():
    runs = LOCAL["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == pools.MAX_CONCURRENT_RUNS["local"]
    assert _limits(runs["tag_concurrency_limits"]) == _limits(pools.queue_limits("local"))

    prod = yaml.safe_load((REPO / "deploy" / "dagster-postgres.yaml").read_text())
    assert prod["concurrency"]["runs"]["max_concurrent_runs"] == (
        pools.MAX_CONCURRENT_RUNS["production"])
    assert _limits(prod["concurrency"]["runs"]["tag_concurrency_limits"]) == _limits(
        pools.queue_limits("production"))
    helm = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())
    assert helm["concurrency"]["enabled"] is True
    assert helm["concurrency"]["runs"]["maxConcurrentRuns"] == (
        pools.MAX_CONCURRENT_RUNS["production"])
    assert _limits(helm["concurrency"]["runs"]["tagConcurrencyLimits"]) == _limits(
        pools.queue_limits("production"))


@pytest.mark.parametrize("deployment", ["local", "production"])
def test_no_automated_queue_with_a_backfill_can_fill_every_slot(deployment):
    top = pools.MAX_CONCURRENT_RUNS[deployment]
    backfill = pools.BACKFILL_LIMIT[deployment]
    caps = {e["value"]: e["limit"] for e in pools.queue_limits(deployment)
            if e["key"] == pools.QUEUE_TAG}
    assert set(caps) == {"training", "etl", "batch"}  # interactive is never capped
    for cap in caps.values():
        assert cap + backfill < top
    if deployment == "production":  # production reserves slots for interactive runs
        assert sum(caps.values()) + backfill < top
    priorities = [pools.QUEUES[n].priority for n in ("interactive", "training", "etl", "batch")]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 4
