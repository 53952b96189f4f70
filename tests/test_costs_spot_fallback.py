"""Spot fallback: a step whose pod gets SIGTERM on Kubernetes (a Spot reclaim) retries as
lost capacity; after two losses, counted in the real event log over the run and the runs
retried from it, its next attempt's Job lands on the on-demand CPU pool and its Kueue queue,
and the run says so. Real signals, real runs on a real (temporary) Dagster instance; the
Job manifest is built offline with dagster-k8s's own functions."""

from __future__ import annotations

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import dagster as dg
import kubernetes
import pytest
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating import StepHandlerContext
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from robolake.costs import spot as S
from robolake.costs.prices import load_prices
from robolake.errors import CapacityLost
from robolake_resources import executors, kueue, pools
from robolake_resources import spot as RS
from robolake_sensors.costs import run_cost_rows
from tests.test_kueue import KUBECONFIG
from tests.test_pools_k8s import JOB_CONFIG, steps_in_defs

FAST_RETRY = dg.RetryPolicy(max_retries=2)  # the pool's own waits 30 s, 60 s ...


def _reclaimed_unless_retried_run(context) -> None:
    """SIGTERM to this process, as the kubelet sends a pod on a reclaimed Spot node (Dagster
    maps SIGTERM to its interrupt, as `dagster api execute_step` does in a step pod)."""
    with pools.retry_only_transient():
        if context.run.parent_run_id is None:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises right here


@dg.op(retry_policy=FAST_RETRY, tags=pools.CPU_SPOT.op_tags())
def reclaimed_step(context) -> None:
    _reclaimed_unless_retried_run(context)


ONCE = {"attempts": 0}


@dg.op(retry_policy=FAST_RETRY, tags=pools.CPU_SPOT.op_tags())
def flaky_step(context) -> None:
    ONCE["attempts"] += 1
    with pools.retry_only_transient():
        if ONCE["attempts"] == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # one loss
        elif ONCE["attempts"] == 2:
            raise ConnectionResetError("S3 reset the connection")  # transient, not capacity


@dg.job(executor_def=dg.in_process_executor)
def spot_job():
    reclaimed_step()
    flaky_step()


@dg.op(retry_policy=FAST_RETRY, tags=pools.CPU_SPOT.op_tags())
def terminated_step(context) -> None:
    """Someone terminates the run (the UI's Terminate: the run is marked cancelling, then
    its step pods are deleted, so their processes get SIGTERM as on a Spot reclaim)."""
    with pools.retry_only_transient():
        if context.retry_number == 0:
            context.instance.report_run_canceling(context.run, "terminated from the UI")
            os.kill(os.getpid(), signal.SIGTERM)


@dg.job(executor_def=dg.in_process_executor)
def terminated_job():
    terminated_step()


def step_handler(instance, run, step_key: str, kubeconfig):
    """The robolake_k8s executor's step handler and its context for one step of `run`, as
    the executor builds them (dagster-k8s's own tests build them the same way)."""
    executor_def = executors.robolake_executor("k8s")
    recon = dg.reconstructable(spot_job)
    executor = executor_def.executor_creation_fn(InitExecutorContext(
        job=recon, executor_def=executor_def, instance=instance,
        executor_config=executors.K8S_EXECUTOR_CONFIG | {
            "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}))
    plan = create_execution_plan(recon)
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(job=recon, dagster_run=run, instance=instance, execution_plan=plan,
                           raise_on_error=True, retry_mode=RetryMode.DISABLED),
        log_manager=create_context_free_log_manager(instance, run), executor=executor,
        output_capture=None)
    args = ExecuteStepArgs(recon.get_python_origin(), run.run_id, [step_key],
                           print_serialized_events=False)
    return executor._step_handler, StepHandlerContext(
        instance=instance, plan_context=plan_context, steps=plan.steps,
        execute_step_args=args, dagster_run=run)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run whose reclaimed_step loses its node on all 3 attempts (and fails), then the
    run retried from it (as run_retries does), where it succeeds."""
    from dagster._utils.interrupts import setup_interrupt_handlers

    kubeconfig = tmp_path_factory.mktemp("kube") / "config"
    kubeconfig.write_text(KUBECONFIG)  # read, never contacted
    launcher = {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
        "instance_config_map": "robolake-dagster-instance", "job_namespace": "robolake",
        "service_account_name": "robolake", "load_incluster_config": False,
        "kubeconfig_file": str(kubeconfig), "job_image": JOB_CONFIG.job_image}}
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        previous = signal.getsignal(signal.SIGTERM)
        os.environ[pools.DEPLOYMENT_VAR] = "k8s"  # as in a step pod
        try:
            setup_interrupt_handlers()  # what the step worker's CLI does first
            parent = dg.execute_job(dg.reconstructable(spot_job), instance,
                                    raise_on_error=False)
            child = dg.execute_job(dg.reconstructable(spot_job), instance, raise_on_error=False,
                                   reexecution_options=dg.ReexecutionOptions.from_failure(
                                       parent.run_id, instance))
        finally:
            os.environ.pop(pools.DEPLOYMENT_VAR, None)
            signal.signal(signal.SIGTERM, previous)
        yield (instance, instance.get_run_by_id(parent.run_id),
               instance.get_run_by_id(child.run_id), kubeconfig)


def test_sigterm_on_kubernetes_is_lost_capacity_counted_across_run_retries(runs):
    instance, parent, child, kubeconfig = runs
    assert parent.status == dg.DagsterRunStatus.FAILURE
    assert child.status == dg.DagsterRunStatus.SUCCESS
    assert child.root_run_id == parent.run_id
    events = [e.dagster_event.event_type for e in instance.all_logs(
        parent.run_id, of_type={dg.DagsterEventType.STEP_UP_FOR_RETRY,
                                dg.DagsterEventType.STEP_FAILURE})
        if e.step_key == "reclaimed_step"]
    # retried as transient (not failed at once), twice, then out of retries
    assert events == [dg.DagsterEventType.STEP_UP_FOR_RETRY] * 2 + [
        dg.DagsterEventType.STEP_FAILURE]
    assert RS.capacity_losses(instance, parent, "reclaimed_step") == 3
    assert RS.capacity_losses(instance, child, "reclaimed_step") == 3  # the group's count
    # flaky_step: one SIGTERM, one network error (retried, but not lost capacity)
    assert RS.capacity_losses(instance, parent, "flaky_step") == 1
    assert RS.retry_chain(instance, child) == [parent.run_id, child.run_id]


def test_a_run_someone_terminated_lost_no_capacity():
    """Terminating a run deletes its step pods: SIGTERM, as on a Spot reclaim. What ends once
    the run is cancelling is not a capacity loss, so it never moves a step off Spot."""
    from dagster._utils.interrupts import setup_interrupt_handlers

    with dg.instance_for_test() as instance:
        previous = signal.getsignal(signal.SIGTERM)
        os.environ[pools.DEPLOYMENT_VAR] = "k8s"
        try:
            setup_interrupt_handlers()
            result = dg.execute_job(dg.reconstructable(terminated_job), instance,
                                    raise_on_error=False)
        finally:
            os.environ.pop(pools.DEPLOYMENT_VAR, None)
            signal.signal(signal.SIGTERM, previous)
        run = instance.get_run_by_id(result.run_id)
        ends = [e.dagster_event for e in instance.all_logs(run.run_id, of_type={
            dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_FAILURE})]
        # the attempt did end on SIGTERM, raised as CapacityLost ...
        assert ends and S.is_capacity_loss(RS.error_chain(ends[0].event_specific_data.error))
        # ... but after the run was marked cancelling: not lost capacity
        assert RS.capacity_losses(instance, run, "terminated_step") == 0


def test_the_next_attempt_after_two_losses_falls_back_and_the_run_says_so(runs):
    instance, parent, child, kubeconfig = runs
    tags = dict(pools.CPU_SPOT.op_tags())
    assert RS.fallback_for(instance, parent, "flaky_step", tags, attempt=2) is None  # 1 loss
    assert RS.fallback_for(instance, parent, "reclaimed_step", tags, attempt=0) is None
    moved, losses = RS.fallback_for(instance, child, "reclaimed_step", tags, attempt=0)
    assert losses == 3 and moved["robolake/pool"] == "cpu_on_demand"
    assert moved[RS.FALLBACK_TAG] == "cpu_spot"
    on_demand = dict(pools.CPU_ON_DEMAND.op_tags())
    assert RS.fallback_for(instance, child, "reclaimed_step", on_demand, attempt=1) is None

    # the k8s executor's own step handler, about to launch the retried run's attempt
    handler, context = step_handler(instance, child, "reclaimed_step", kubeconfig)
    placed = handler._get_container_context(context)
    job = kubernetes.client.ApiClient().sanitize_for_serialization(construct_dagster_k8s_job(
        JOB_CONFIG, ["dagster", "api", "execute_step"], "dagster-step-x",
        user_defined_k8s_config=placed.run_k8s_config, component="step_worker"))
    assert placed.namespace == "team-platform"  # an untagged run is the platform team's
    assert job["spec"]["template"]["spec"]["nodeSelector"][pools.CAPACITY_TYPE] == "on-demand"
    assert job["metadata"]["labels"][pools.KUEUE_QUEUE_LABEL] == "cpu-on-demand"
    first = next(handler.launch_step(context))  # the Job would be created right after this
    assert first.event_type == dg.DagsterEventType.STEP_WORKER_STARTING
    assert instance.get_run_by_id(child.run_id).tags[RS.FALLBACK_TAG] == "reclaimed_step@0=3"
    RS.record_fallback(instance, child, "other_step", 1, 2, moved)
    RS.record_fallback(instance, child, "other_step", 2, 3, moved)  # moved at attempt 1
    assert instance.get_run_by_id(child.run_id).tags[RS.FALLBACK_TAG] == (
        "other_step@1=2,reclaimed_step@0=3")
    events = [e for e in instance.all_logs(child.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
              if e.step_key == "reclaimed_step"]
    [meta] = [e.dagster_event.engine_event_data.metadata for e in events]
    assert (meta["capacity_losses"].value, meta["pool"].value, meta["attempt"].value) == (
        3, "cpu_on_demand", 0)

    # the cost sensor prices the moved attempt on-demand (half an m6i.xlarge: 2 of 4 CPUs,
    # 8 of 16 GiB) and the Spot attempts of the parent run at Spot, retries included
    prices = load_prices()
    [moved_row] = run_cost_rows(instance, instance.get_run_by_id(child.run_id))
    assert (moved_row["step_key"], moved_row["pool"], moved_row["capacity"]) == (
        "reclaimed_step@cpu_on_demand", "cpu_on_demand", "on-demand")
    assert moved_row["share"] == 0.5 and moved_row["instance_type"] == "m6i.xlarge"
    assert moved_row["usd"] == pytest.approx(moved_row["duration_s"] / 3600 * 0.5 * prices.pool(
        "cpu_on_demand").reference_type.on_demand)
    parent_rows = {r["step_key"]: r for r in run_cost_rows(instance, parent)}
    assert set(parent_rows) == {"reclaimed_step", "flaky_step"}
    assert parent_rows["reclaimed_step"]["capacity"] == "spot"
    spans, start = [], None  # each attempt, from its start (or restart) to its end
    for e in instance.all_logs(parent.run_id):
        kind = e.dagster_event and e.step_key == "reclaimed_step" and e.dagster_event.event_type
        if kind in (dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED):
            start = e.timestamp
        elif kind in (dg.DagsterEventType.STEP_UP_FOR_RETRY, dg.DagsterEventType.STEP_FAILURE):
            spans.append(e.timestamp - start)
    assert len(spans) == 3  # three attempts, each paid for
    assert parent_rows["reclaimed_step"]["duration_s"] == pytest.approx(sum(spans), abs=1e-3)


def test_decision_rules():
    assert S.fallback_pool("cpu_spot", 1) is None
    assert S.fallback_pool("cpu_spot", 2) == "cpu_on_demand"
    assert S.fallback_pool("gpu_standard", 5) is None  # training checkpoints instead
    assert S.is_capacity_loss([("DagsterExecutionStepExecutionError", "Error in op"),
                               ("CapacityLost", "SIGTERM")])
    assert not S.is_capacity_loss([("OSError", "No space left")])
    # a Dagster interrupt off Kubernetes (a person's Ctrl-C) is not turned into a retry
    with pytest.raises(DagsterExecutionInterruptedError), pools.retry_only_transient():
        raise DagsterExecutionInterruptedError()
    os.environ[pools.DEPLOYMENT_VAR] = "k8s"
    try:
        with pytest.raises(CapacityLost), pools.retry_only_transient():
            raise DagsterExecutionInterruptedError()
    finally:
        os.environ.pop(pools.DEPLOYMENT_VAR)


def test_health_check_failures_are_capacity_only_when_kubernetes_disrupted_the_pod():
    evicted = {"status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet",
         "message": "Pod was terminated in response to imminent node shutdown."}]}}
    lost_node = {"status": {"phase": "Failed", "reason": "NodeLost", "message": "node gone"}}
    oom = {"status": {"phase": "Failed", "conditions": [{"type": "Ready", "status": "False"}],
                      "containerStatuses": [{"state": {"terminated": {
                          "reason": "OOMKilled", "exitCode": 137}}}]}}
    assert S.pod_disruption(evicted) == ("TerminationByKubelet: Pod was terminated in response "
                                         "to imminent node shutdown.")
    assert S.pod_disruption(lost_node) == "NodeLost: node gone"
    assert S.pod_disruption(oom) is None
    # what the Kueue step handler's health check reports for the evicted pod
    reason = (f"Step s failed health check: Discovered failed Kubernetes job j for step s. "
              f"Spot {S.CAPACITY_LOST}: pod p: {S.pod_disruption(evicted)}")
    assert S.is_capacity_loss([(None, reason)])
    assert not S.is_capacity_loss([(None, "Step s failed health check: Discovered failed "
                                          "Kubernetes job j for step s.")])


def test_the_fallback_attempt_job_lands_on_the_on_demand_pool_and_queue():
    op_tags = dict(steps_in_defs()["raw_uploads"][0])
    assert op_tags["robolake/pool"] == "cpu_spot"
    run_tags = {pools.TEAM_TAG: "perception", pools.QUEUE_TAG: "etl"}
    context = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executors.STEP_K8S_CONFIG))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(
        op_tags)))
    placed = executors.placed_container_context(context, run_tags, op_tags,
                                                RS.fallback_tags(op_tags, "cpu_on_demand"))
    job = kubernetes.client.ApiClient().sanitize_for_serialization(construct_dagster_k8s_job(
        JOB_CONFIG, ["dagster", "api", "execute_step"], "dagster-step-raw-uploads-2",
        user_defined_k8s_config=placed.run_k8s_config, component="step_worker"))
    pod = job["spec"]["template"]
    spec, [container] = pod["spec"], pod["spec"]["containers"]
    assert placed.namespace == "team-perception"
    assert spec["nodeSelector"] == {pools.POOL_LABEL: "cpu-on-demand",
                                    pools.CAPACITY_TYPE: "on-demand"}
    assert not spec.get("tolerations")  # the Spot toleration is gone, not appended to
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"},
                                      "limits": {"memory": "16Gi"}}  # sized as on Spot
    assert pod["metadata"]["labels"][pools.POOL_LABEL] == "cpu-on-demand"
    assert pod["metadata"]["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}
    labels = job["metadata"]["labels"]
    assert labels[pools.KUEUE_QUEUE_LABEL] == "cpu-on-demand"
    assert labels[pools.KUEUE_PRIORITY_LABEL] == "robolake-etl"
    # the executor's base config still reaches the pod
    assert job["spec"]["backoffLimit"] == 0 and spec["terminationGracePeriodSeconds"] == 90
    assert {"name": "ROBOLAKE_DEPLOYMENT", "value": "k8s"} in container["env"]
    # the team's on-demand ClusterQueue covers exactly what the Job asks for, and has room
    [queue] = [d for d in kueue.manifests() if d["kind"] == "ClusterQueue"
               and d["metadata"]["name"] == "perception-cpu-on-demand"]
    [group] = queue["spec"]["resourceGroups"]
    assert set(group["coveredResources"]) == set(container["resources"]["requests"])
    [flavor] = group["flavors"]
    assert flavor["name"] == "cpu-on-demand"
    quota = {r["name"]: r["nominalQuota"] for r in flavor["resources"]}
    assert quota == {"cpu": "4", "memory": "16Gi"}  # 4 steps of 1 CPU / 4Gi: room for it


def test_the_step_handlers_health_check_says_when_kubernetes_took_the_pod(runs, tmp_path):
    """A failed step Job whose pod Kubernetes disrupted is reported as lost capacity, one
    that failed on its own (OOM) is not: the handler reads the Job and its pods through
    the kubernetes client from an API server on loopback that serves those two reads."""
    instance, _parent, child, _kubeconfig = runs
    pod_status = {"phase": "Failed"}

    class Api(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = urlparse(self.path)
            if path.path.endswith("/status"):  # the step Job: failed
                body = {"apiVersion": "batch/v1", "kind": "Job",
                        "metadata": {"name": path.path.split("/")[-2]}, "status": {"failed": 1}}
            else:
                assert parse_qs(path.query)["labelSelector"][0].startswith("job-name=")
                body = {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    {"metadata": {"name": "step-pod-1"}, "status": pod_status}]}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(KUBECONFIG.replace("https://127.0.0.1:1",
                                             f"http://127.0.0.1:{server.server_port}"))
    try:
        handler, context = step_handler(instance, child, "reclaimed_step", kubeconfig)
        pod_status["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                     "reason": "EvictionByEvictionAPI",
                                     "message": "Eviction API: evicting"}]
        disrupted = handler.check_step_health(context)
        pod_status["conditions"] = [{"type": "Ready", "status": "False"}]
        oom = handler.check_step_health(context)
    finally:
        server.shutdown()
    assert not disrupted.is_healthy and not oom.is_healthy
    assert disrupted.unhealthy_reason.endswith(
        "Spot capacity lost: pod step-pod-1: EvictionByEvictionAPI: Eviction API: evicting")
    assert S.is_capacity_loss([(None, disrupted.unhealthy_reason)])
    assert oom.unhealthy_reason.startswith("Discovered failed Kubernetes job dagster-step-")
    assert not S.is_capacity_loss([(None, oom.unhealthy_reason)])
