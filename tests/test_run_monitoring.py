"""Run monitoring for the Kubernetes run launcher, offline: the run_monitoring and
run_retries settings the Helm values render, driven through Dagster's own monitoring
daemon code. The run launcher stands in for K8sRunLauncher at the one point that needs a
cluster: it reports the run worker's Job as failed, as K8sRunLauncher does when the pod
went down with its node. The run is resumed by new workers up to the configured number of
times, then marked failed, and then picked for an automatic retry.
"""

from __future__ import annotations

import logging

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, RunLauncher, WorkerStatus
from dagster._core.test_utils import instance_for_test
from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry
from dagster._daemon.monitoring.run_monitoring import monitor_started_run
from dagster._serdes import ConfigurableClass

from tests.test_deploy import HELM_VALUES, render_instance


class NodeLostLauncher(RunLauncher, ConfigurableClass):
    """Every run worker is gone (its node was lost); records each resume."""

    def __init__(self, inst_data=None):
        self._inst_data = inst_data
        self.resumed: list[int] = []

    @property
    def inst_data(self):
        return self._inst_data

    @classmethod
    def config_type(cls):
        return {}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data)

    def launch_run(self, context) -> None:
        pass

    def terminate(self, run_id):
        return False

    @property
    def supports_check_run_worker_health(self):
        return True

    def check_run_worker_health(self, run):
        return CheckRunHealthResult(WorkerStatus.FAILED, "pod deleted: node lost")

    @property
    def supports_resume_run(self):
        return True

    def resume_run(self, context) -> None:
        self.resumed.append(context.resume_attempt_number)


@dg.op
def step():
    pass


@dg.job
def probe():
    step()


def test_a_lost_run_worker_is_resumed_then_failed_then_retried(monkeypatch):
    for name in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER",
                 "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(name, "x")
    rendered = render_instance(HELM_VALUES)
    monitoring, retries = rendered["run_monitoring"], rendered["run_retries"]
    assert monitoring["max_resume_run_attempts"] == 2 and monitoring["poll_interval_seconds"] <= 60
    assert retries["enabled"] and retries["max_retries"] == 2
    launcher = HELM_VALUES["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    assert launcher["jobSpecConfig"]["backoff_limit"] == 0  # Kubernetes does not restart it

    overrides = {"run_launcher": {"module": __name__, "class": "NodeLostLauncher"},
                 "run_monitoring": monitoring, "run_retries": retries}
    with instance_for_test(overrides=overrides) as instance:
        assert instance.run_monitoring_max_resume_run_attempts == 2
        run = instance.create_run_for_job(probe, status=dg.DagsterRunStatus.STARTED)
        for _ in range(3):  # three daemon iterations
            monitor_started_run(instance, None, instance.get_run_record_by_id(run.run_id),
                                logging.getLogger("test"))
        assert instance.run_launcher.resumed == [1, 2]
        run = instance.get_run_by_id(run.run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        failure = [e for e in instance.all_logs(run.run_id)
                   if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
        assert "surpassed the configured maximum attempts to resume the run: 2" in \
            failure[0].message
        # the run retries daemon takes it from here (a new run from the failed steps)
        assert should_retry(run, instance)
        assert instance.get_run_by_id(run.run_id).tags["dagster/will_retry"] == "true"
