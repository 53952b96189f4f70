"""Compute routing: the Kubernetes Job that dagster-k8s builds for each step lands in its pool.

Manifests are built offline with dagster-k8s's own functions, merging the
executor's base step config and the op's `dagster-k8s/config` tags exactly as
`K8sStepHandler` does, for every asset and every op of every job in `defs`
(new layers are covered as they land).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import kubernetes
import pytest
from dagster._config import process_config
from dagster_k8s import k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from robolake.settings import Settings
from robolake_assets.definitions import defs
from robolake_resources import executors, pools

REPO = Path(__file__).resolve().parents[1]
JOB_CONFIG = DagsterK8sJobConfig(
    job_image="registry.example.com/robolake/code-location:0.1.0",
    dagster_home="/opt/dagster/dagster_home",
    image_pull_policy="IfNotPresent",
    image_pull_secrets=[],
    service_account_name="robolake",
    instance_config_map="robolake-dagster-instance",
    postgres_password_secret="dagster-postgresql-secret",
    env_config_maps=[],
    env_secrets=[],
)


def step_manifest(name: str, tags: dict) -> dict:
    """The step Job manifest k8s_job_executor would submit for an op with these tags."""
    base = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executors.STEP_K8S_CONFIG))
    context = base.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    job = construct_dagster_k8s_job(
        JOB_CONFIG, ["dagster", "api", "execute_step"], f"dagster-step-{name.replace('_', '-')}",
        user_defined_k8s_config=context.run_k8s_config, component="step_worker",
        labels={"dagster/op": name})
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)


def steps_in_defs() -> dict[str, tuple[dict, str | None]]:
    """Every op that can run as a step: each asset's node, and each job's ops."""
    repo = defs.get_repository_def()
    steps = {}
    for assets_def in repo.asset_graph.assets_defs:
        if assets_def.is_executable:
            node = assets_def.node_def
            steps[node.name] = (dict(node.tags), getattr(node, "pool", None))
    for job in repo.get_all_jobs():
        for node_def in job.graph.iterate_op_defs():
            if isinstance(node_def, dg.OpDefinition):
                steps.setdefault(node_def.name, (dict(node_def.tags), node_def.pool))
    return steps


def assert_in_pool(manifest: dict, pool: pools.Pool) -> None:
    pod = manifest["spec"]["template"]
    spec = pod["spec"]
    [container] = spec["containers"]
    assert spec["nodeSelector"] == pool.node_selector
    assert spec["tolerations"] == pool.tolerations
    resources = container["resources"]
    gpu = {"nvidia.com/gpu": str(pool.gpus)} if pool.gpus else {}
    assert resources["requests"] == {**pool.requests, **gpu}
    assert resources["limits"] == {**pool.limits, **gpu}
    if not pool.gpus:
        assert "nvidia.com/gpu" not in json.dumps(resources)
    assert pod["metadata"]["labels"][pools.POOL_LABEL] == pool.label
    # the executor's base config reaches every step pod too
    assert manifest["spec"]["backoffLimit"] == 0
    assert spec["terminationGracePeriodSeconds"] == 90
    assert {"name": "ROBOLAKE_DEPLOYMENT", "value": "k8s"} in container["env"]


def test_every_step_in_defs_declares_a_known_pool():
    steps = steps_in_defs()
    assert {"raw_uploads", "cleaned_layer", "compact_and_vacuum_lake"} <= set(steps)
    for name, (tags, pool) in steps.items():
        assert pool in pools.POOLS, f"{name}: pool {pool!r} is not one of {sorted(pools.POOLS)}"
        assert tags["robolake/pool"] == pool, name
        assert "dagster-k8s/config" in tags, f"{name}: no dagster-k8s/config tag"


@pytest.mark.parametrize("step", sorted(steps_in_defs()))
def test_step_job_manifest_lands_in_its_pool(step):
    tags, pool_name = steps_in_defs()[step]
    pool = pools.POOLS[pool_name]
    manifest = step_manifest(step, tags)
    assert_in_pool(manifest, pool)
    annotations = manifest["spec"]["template"]["metadata"].get("annotations") or {}
    # preemptible steps may be consolidated away; the others must not be
    assert ("karpenter.sh/do-not-disrupt" in annotations) == (not pool.preemptible)


def test_etl_layers_run_on_spot_and_retry_with_backoff():
    repo = defs.get_repository_def()
    for assets_def in repo.asset_graph.assets_defs:
        if assets_def.group_names_by_key and set(assets_def.group_names_by_key.values()) & {
                "raw", "cleaned"}:
            node = assets_def.node_def
            assert node.pool == "cpu_spot", node.name
            policy = node.retry_policy
            assert policy.max_retries >= 3 and policy.backoff == dg.Backoff.EXPONENTIAL


@pytest.mark.parametrize("helper,pool,gpus", [
    (lambda: pools.gpu(), pools.GPU_STANDARD, 1),
    (lambda: pools.gpu(high=True), pools.GPU_HIGH, 8),
    (pools.cpu_on_demand, pools.CPU_ON_DEMAND, 0),
    (pools.cpu_spot, pools.CPU_SPOT, 0),
])
def test_each_helper_yields_its_pool(helper, pool, gpus):
    @dg.asset(name="probe", **helper())
    def probe() -> None: ...

    node = probe.node_def
    assert node.pool == pool.name
    manifest = step_manifest("probe", dict(node.tags))
    assert_in_pool(manifest, pool)
    limits = manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == bool(gpus)
    assert any(t.get("value") == "gpu-high" for t in tolerations) == (gpus == 8)
    assert any(t.get("value") == "spot" for t in tolerations) == pool.preemptible


def test_executor_is_chosen_by_ROBOLAKE_DEPLOYMENT():
    def executor(env: dict[str, str]) -> dg.ExecutorDefinition:
        return executors.robolake_executor(Settings.from_env(env).deployment)

    assert executor({}) is dg.multi_or_in_process_executor
    assert executor({"ROBOLAKE_DEPLOYMENT": "local"}) is dg.multi_or_in_process_executor
    k8s = executor({"ROBOLAKE_DEPLOYMENT": "k8s"})
    assert k8s.name == "robolake_k8s"
    with pytest.raises(ValueError, match="ROBOLAKE_DEPLOYMENT='kubernetes-typo': expected "
                                         "'local' or 'k8s'"):
        executor({"ROBOLAKE_DEPLOYMENT": "kubernetes-typo"})
    # the configured values are valid k8s_job_executor config
    result = process_config(k8s_job_executor.config_schema.config_type,
                            executors.K8S_EXECUTOR_CONFIG)
    assert result.success, result.errors
    assert result.value["retries"] == {"enabled": {}}


def test_definitions_load_with_the_k8s_executor(tmp_path):
    code = ("from robolake_assets.definitions import defs\n"
            "repo = defs.get_repository_def()\n"
            "print(sorted({j.executor_def.name for j in repo.get_all_jobs()}))\n")
    env = {"ROBOLAKE_DEPLOYMENT": "k8s", "ROBOLAKE_LAKE": str(tmp_path / "lake"),
           "ROBOLAKE_LANDING": str(tmp_path / "landing"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['robolake_k8s']"
