"""deploy/: every Kubernetes manifest validates (strict, current Kubernetes), the Helm values
have the shape the Dagster chart expects and render to a valid instance, and the node
pools match the pools in code. No cluster and no helm binary needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import (
    dagster_instance_config_schema,
    validate_concurrency_config,
)
from dagster._core.instance_for_test import instance_for_test

from robolake_resources import pools
from tests.test_pools_k8s import step_manifest, steps_in_defs

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.37.0"
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
HELM_VALUES = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
NODEPOOLS = [d for d in yaml.safe_load_all((DEPLOY / "karpenter" / "nodepools.yaml").read_text())
             if d]


def kubernetes_validate(*files: Path) -> str:
    out = subprocess.run([str(VALIDATOR), "--strict", "-k", K8S_VERSION, *map(str, files)],
                         capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "WARN" not in text and "ERROR" not in text, text
    return text


# --------------------------------------------------------------------------- manifests


def test_checked_in_manifests_validate_strictly():
    files = sorted((DEPLOY / "k8s").glob("*.yaml"))
    assert files
    text = kubernetes_validate(*files)
    assert text.count("passed") == sum(
        len([d for d in yaml.safe_load_all(f.read_text()) if d]) for f in files)


def test_validator_rejects_a_misspelled_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    job = yaml.safe_load((DEPLOY / "k8s" / "pool-limits-job.yaml").read_text())
    job["spec"]["template"]["spec"]["nodeSelektor"] = job["spec"]["template"]["spec"].pop(
        "nodeSelector")
    bad.write_text(yaml.safe_dump(job))
    out = subprocess.run([str(VALIDATOR), "--strict", "-k", K8S_VERSION, str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "nodeSelektor" in out.stdout


def test_rendered_step_jobs_and_instance_configmap_validate_strictly(tmp_path):
    rendered = []
    for name, (tags, _pool) in sorted(steps_in_defs().items()):
        path = tmp_path / f"step-{name}.yaml"
        path.write_text(yaml.safe_dump(step_manifest(name, tags)))
        rendered.append(path)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "robolake-dagster-instance", "namespace": "robolake"},
                 "data": {"dagster.yaml": yaml.safe_dump(render_instance(HELM_VALUES))}}
    (tmp_path / "instance.yaml").write_text(yaml.safe_dump(configmap))
    text = kubernetes_validate(*rendered, tmp_path / "instance.yaml")
    assert text.count("passed") == len(rendered) + 1


# --------------------------------------------------------------------------- Karpenter

_REQ = {"type": "object", "required": ["key", "operator"], "additionalProperties": False,
        "properties": {"key": {"type": "string"},
                       "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
                       "values": {"type": "array", "items": {"type": "string"}},
                       "minValues": {"type": "integer", "minimum": 1}}}
_TAINT = {"type": "object", "required": ["key", "effect"], "additionalProperties": False,
          "properties": {"key": {"type": "string"}, "value": {"type": "string"},
                         "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}}}
_QUANTITIES = {"type": "object", "additionalProperties": {"type": "string"}}
# karpenter.sh/v1 NodePool (the fields Robolake uses; unknown fields are rejected)
NODEPOOL_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "karpenter.sh/v1"}, "kind": {"const": "NodePool"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["template"], "additionalProperties": False,
                 "properties": {
                     "template": {"type": "object", "required": ["spec"],
                                  "additionalProperties": False, "properties": {
                                      "metadata": {"type": "object", "additionalProperties": False,
                                                   "properties": {"labels": _QUANTITIES,
                                                                  "annotations": _QUANTITIES}},
                                      "spec": {"type": "object",
                                               "required": ["nodeClassRef", "requirements"],
                                               "additionalProperties": False, "properties": {
                                                   "nodeClassRef": {
                                                       "type": "object",
                                                       "required": ["group", "kind", "name"],
                                                       "additionalProperties": False,
                                                       "properties": {
                                                           "group": {"type": "string"},
                                                           "kind": {"type": "string"},
                                                           "name": {"type": "string"}}},
                                                   "requirements": {"type": "array",
                                                                    "items": _REQ},
                                                   "taints": {"type": "array", "items": _TAINT},
                                                   "startupTaints": {"type": "array",
                                                                     "items": _TAINT},
                                                   "expireAfter": {"type": "string",
                                                                   "pattern": r"^(\d+h)+$|^Never$"},
                                                   "terminationGracePeriod": {
                                                       "type": "string"}}}}},
                     "disruption": {"type": "object", "additionalProperties": False,
                                    "properties": {
                                        "consolidationPolicy": {
                                            "enum": ["WhenEmpty", "WhenEmptyOrUnderutilized"]},
                                        "consolidateAfter": {"type": "string",
                                                             "pattern": r"^(\d+[hms])+$|^Never$"},
                                        "budgets": {"type": "array", "items": {
                                            "type": "object", "required": ["nodes"]}}}},
                     "limits": _QUANTITIES,
                     "weight": {"type": "integer", "minimum": 1, "maximum": 100}}}}}


def _core_validator(schema_file: str) -> jsonschema.Validator:
    """A validator for one Kubernetes type from kubernetes-validate's bundled strict schemas."""
    import kubernetes_validate
    from referencing import Registry, Resource

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / (
        f"v{K8S_VERSION}-local-strict")
    schema = json.loads((base / schema_file).read_text())
    definitions = json.loads((base / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_nodepools_validate_and_match_the_pools_in_code():
    taint = _core_validator("taint-v1.json")
    requirement = _core_validator("nodeselectorrequirement-v1.json")
    with pytest.raises(jsonschema.ValidationError):  # strict: unknown fields are rejected
        taint.validate({"key": "k", "effect": "NoSchedule", "efect": "x"})
    by_label = {}
    for doc in NODEPOOLS:
        if doc["kind"] != "NodePool":
            assert doc["apiVersion"] == "karpenter.k8s.aws/v1" and doc["kind"] == "EC2NodeClass"
            continue
        jsonschema.validate(doc, NODEPOOL_SCHEMA)
        spec = doc["spec"]["template"]["spec"]
        for t in spec.get("taints", []):
            taint.validate(t)
        for req in spec["requirements"]:
            requirement.validate({k: v for k, v in req.items() if k != "minValues"})
        by_label[doc["spec"]["template"]["metadata"]["labels"][pools.POOL_LABEL]] = doc
    node_classes = {d["metadata"]["name"] for d in NODEPOOLS if d["kind"] == "EC2NodeClass"}

    assert set(by_label) == {p.label for p in pools.POOLS.values()}
    for pool in pools.POOLS.values():
        nodepool = by_label[pool.label]
        spec = nodepool["spec"]["template"]["spec"]
        assert spec["nodeClassRef"]["name"] in node_classes
        # the pod's node selector is satisfiable by this pool's nodes
        capacity = {r["key"]: r["values"] for r in spec["requirements"]}[pools.CAPACITY_TYPE]
        assert capacity == [pool.node_selector[pools.CAPACITY_TYPE]]
        # every taint of the pool is tolerated by the pool's pods
        for taint in spec.get("taints", []):
            assert any(t["key"] == taint["key"] and t["effect"] == taint["effect"]
                       and (t["operator"] == "Exists" or t.get("value") == taint.get("value"))
                       for t in pool.tolerations), (pool.name, taint)
        limits = nodepool["spec"].get("limits", {})
        assert ("nvidia.com/gpu" in limits) == bool(pool.gpus)
        if pool.gpus:
            assert int(limits["nvidia.com/gpu"]) >= pool.gpus
            gpu_count = {r["key"]: r["values"] for r in spec["requirements"]}[
                "karpenter.k8s.aws/instance-gpu-count"]
            assert gpu_count == [str(pool.gpus)]
    # Spot pods tolerate Spot; nothing else does, so on-demand work never lands on Spot
    assert [p.name for p in pools.POOLS.values()
            if pools.SPOT_TOLERATION in p.tolerations] == ["cpu_spot"]


# --------------------------------------------------------------------------- Helm values

CHART_TOP_KEYS = {
    "global", "serviceAccount", "dagsterWebserver", "dagster-user-deployments", "runLauncher",
    "postgresql", "generatePostgresqlPasswordSecret", "computeLogManager", "dagsterDaemon",
    "concurrency", "additionalInstanceConfig", "telemetry", "imagePullSecrets", "ingress",
    "pythonLogs", "retention", "scheduler", "migrate", "busybox", "rabbitmq", "redis", "flower",
    "generateCeleryConfigSecret"}
K8S_RUN_LAUNCHER_KEYS = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
    "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
    "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig"}
RUN_K8S_CONFIG_KEYS = {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata",
                       "jobSpecConfig", "jobMetadata"}
QUEUED_KEYS = {"maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds",
               "dequeueNumWorkers", "dequeueUseThreads", "blockOpConcurrencyLimitedRuns"}
POSTGRES_KEYS = {"postgresqlScheme", "image", "enabled", "postgresqlHost", "postgresqlUsername",
                 "postgresqlPassword", "postgresqlDatabase", "postgresqlParams", "service"}
S3_LOG_KEYS = {"localDir", "prefix", "useSsl", "verify", "verifyCertPath", "endpointUrl",
               "skipEmptyFiles", "uploadInterval", "uploadExtraArgs", "showUrlOnly", "region",
               "bucket"}
USER_DEPLOYMENT_KEYS = {
    "name", "image", "port", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
    "env", "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity",
    "tolerations", "podSecurityContext", "securityContext", "resources", "livenessProbe",
    "readinessProbe", "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName"}


def test_helm_values_have_the_keys_the_chart_expects():
    v = HELM_VALUES
    assert set(v) <= CHART_TOP_KEYS, set(v) - CHART_TOP_KEYS
    launcher = v["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER_KEYS and set(k8s["runK8sConfig"]) <= RUN_K8S_CONFIG_KEYS
    # run workers coordinate steps: on-demand, never Spot
    run_pod = k8s["runK8sConfig"]["podSpecConfig"]
    assert run_pod["node_selector"] == pools.CPU_ON_DEMAND.node_selector

    coordinator = v["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    assert set(queued) <= QUEUED_KEYS
    # with `concurrency.enabled` the limits must live there, not in the coordinator
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued)
    assert v["concurrency"]["pools"]["granularity"] in ("op", "run")

    pg = v["postgresql"]
    assert set(pg) <= POSTGRES_KEYS
    assert pg["enabled"] is False and pg["postgresqlScheme"] == "postgresql+psycopg2"
    assert pg["postgresqlPassword"] == "" and v["generatePostgresqlPasswordSecret"] is False
    assert v["global"]["postgresqlSecretName"]

    logs = v["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    assert set(logs["config"]["s3ComputeLogManager"]) <= S3_LOG_KEYS
    assert logs["config"]["s3ComputeLogManager"]["bucket"]

    users = v["dagster-user-deployments"]
    assert users["enabled"] and users["enableSubchart"]
    [deployment] = users["deployments"]
    assert set(deployment) <= USER_DEPLOYMENT_KEYS
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "robolake_assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["ROBOLAKE_DEPLOYMENT"] == "k8s"
    assert env["ROBOLAKE_LAKE"].startswith("s3://")
    assert not any("SECRET" in k or "PASSWORD" in k for k in env)  # secrets via IRSA/Secrets


def render_instance(values: dict) -> dict:
    """The dagster.yaml the chart's instance ConfigMap renders from these values (the parts
    Robolake sets), following the chart's configmap-instance template."""
    pg = values["postgresql"]
    postgres_db = {"username": pg["postgresqlUsername"],
                   "password": {"env": "DAGSTER_PG_PASSWORD"},
                   "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
                   "port": pg["service"]["port"], "params": pg["postgresqlParams"],
                   "scheme": pg["postgresqlScheme"]}
    storage = {"module_config": {"postgres_db": postgres_db}}
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    rk = k8s["runK8sConfig"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    s3 = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    conc = values["concurrency"]
    snake = {"dequeueIntervalSeconds": "dequeue_interval_seconds",
             "dequeueUseThreads": "dequeue_use_threads",
             "dequeueNumWorkers": "dequeue_num_workers"}
    instance = {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {"module": "dagster_postgres.schedule_storage",
                             "class": "PostgresScheduleStorage",
                             "config": storage["module_config"]},
        "run_storage": {"module": "dagster_postgres.run_storage", "class": "PostgresRunStorage",
                        "config": storage["module_config"]},
        "event_log_storage": {"module": "dagster_postgres.event_log",
                              "class": "PostgresEventLogStorage",
                              "config": storage["module_config"]},
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "load_incluster_config": k8s["loadInclusterConfig"],
            "image_pull_policy": k8s["imagePullPolicy"],
            "service_account_name": values["global"]["serviceAccountName"],
            "instance_config_map": "robolake-dagster-instance",
            "postgres_password_secret": values["global"]["postgresqlSecretName"],
            "dagster_home": "/opt/dagster/dagster_home",
            "run_k8s_config": {
                "container_config": rk["containerConfig"], "pod_spec_config": rk["podSpecConfig"],
                "pod_template_spec_metadata": rk["podTemplateSpecMetadata"],
                "job_spec_config": rk["jobSpecConfig"]}}},
        "run_coordinator": {"module": "dagster.core.run_coordinator",
                            "class": "QueuedRunCoordinator",
                            "config": {snake[k]: v for k, v in queued.items()}},
        "compute_logs": {"module": "dagster_aws.s3.compute_log_manager",
                         "class": "S3ComputeLogManager", "config": {
                             "bucket": s3["bucket"], "prefix": s3["prefix"],
                             "region": s3["region"], "upload_interval": s3["uploadInterval"],
                             "skip_empty_files": s3["skipEmptyFiles"]}},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "concurrency": {
            "pools": {"default_limit": conc["pools"]["defaultLimit"],
                      "granularity": conc["pools"]["granularity"]},
            "runs": {"max_concurrent_runs": conc["runs"]["maxConcurrentRuns"],
                     "tag_concurrency_limits": conc["runs"]["tagConcurrencyLimits"]}},
    }
    instance.update(values.get("additionalInstanceConfig") or {})
    return instance


def _assert_valid_instance(config: dict) -> None:
    result = process_config(dagster_instance_config_schema(), config)
    assert result.success, [e.message for e in result.errors]
    validate_concurrency_config(config)


def test_helm_values_render_a_valid_instance_that_matches_dagster_postgres_yaml(monkeypatch):
    for name, value in {"DAGSTER_PG_HOST": "db", "DAGSTER_PG_PORT": "5432",
                        "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "x",
                        "DAGSTER_PG_DB": "dagster"}.items():
        monkeypatch.setenv(name, value)
    rendered = render_instance(HELM_VALUES)
    _assert_valid_instance(rendered)
    variant = yaml.safe_load((DEPLOY / "dagster-postgres.yaml").read_text())
    _assert_valid_instance(variant)
    for key in ("concurrency", "run_retries", "run_monitoring"):
        # only K8sRunLauncher can resume a run whose worker was lost
        k8s_only = {"max_resume_run_attempts"} if key == "run_monitoring" else set()
        assert {k: v for k, v in rendered[key].items() if k not in k8s_only} == variant[key], key
    assert variant["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    # a run may not outlive the window the vacuum retention protects
    from robolake import maintenance

    assert variant["run_monitoring"]["max_runtime_seconds"] == maintenance.MAX_RUN_HOURS * 3600
    assert maintenance.safe_retention_hours() >= 2 * maintenance.MAX_RUN_HOURS


def test_embedded_dagster_yaml_is_a_valid_instance():
    _assert_valid_instance(yaml.safe_load((REPO / "dagster.yaml").read_text()))


# --------------------------------------------------------------------------- image, pool limits


def test_dockerfile_installs_the_pinned_project_and_serves_the_code_location():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11" in text
    assert "pip install -c constraints.txt ." in text
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {package: setuptools["package-dir"].get(package, package.replace(".", "/"))
               for package in setuptools["packages"]}
    # the dependency layer installs an empty skeleton of every package folder
    skeleton = text.split("for d in ", 1)[1].split("; do", 1)[0].replace("\\", " ").split()
    assert sorted(skeleton) == sorted(folders.values())
    for folder in folders.values():
        top = folder.split("/")[0]
        assert f"COPY {top} ./{top}" in text, folder
    assert '"-m", "robolake_assets.definitions"' in text
    assert "ROBOLAKE_DEPLOYMENT=k8s" in text and "USER 10001" in text


def test_pool_limits_are_applied_to_the_instance():
    out = subprocess.run([sys.executable, "-m", "robolake_resources.pools", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert dict(line.split("\t") for line in out.stdout.splitlines()) == {
        k: str(v) for k, v in pools.POOL_LIMITS.items()}
    with instance_for_test() as instance:
        pools.apply_pool_limits(instance)
        pools.apply_pool_limits(instance)  # idempotent
        for name, slots in pools.POOL_LIMITS.items():
            assert instance.event_log_storage.get_concurrency_info(name).slot_count == slots
    job = yaml.safe_load((DEPLOY / "k8s" / "pool-limits-job.yaml").read_text())
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "robolake_resources.pools"]


@pytest.mark.parametrize("doc", ["README.md"])
def test_deploy_readme_names_every_file(doc):
    text = (DEPLOY / doc).read_text()
    for path in ("Dockerfile", "helm/values.yaml", "karpenter/nodepools.yaml",
                 "k8s/pool-limits-job.yaml", "k8s/spark-rbac.yaml", "dagster-postgres.yaml"):
        assert path in text, path


def test_spark_executors_on_kubernetes_follow_the_cpu_spot_pool(tmp_path):
    from robolake_resources.spark import executor_pod_template, k8s_driver_config, spark_config

    conf = spark_config("k8s://https://kubernetes.default.svc:443", image="img:1")
    spot = pools.CPU_SPOT
    selector = {k.removeprefix("spark.kubernetes.executor.node.selector."): v
                for k, v in conf.items() if k.startswith("spark.kubernetes.executor.node.sel")}
    assert selector == spot.node_selector
    assert conf["spark.executor.cores"] == spot.requests["cpu"]
    heap, overhead = (int(conf[k].removesuffix("g")) for k in
                      ("spark.executor.memory", "spark.executor.memoryOverhead"))
    assert f"{heap + overhead}Gi" == spot.requests["memory"]
    assert conf["spark.dynamicAllocation.enabled"] == "true"
    assert conf["spark.decommission.enabled"] == "true"
    assert conf["spark.kubernetes.container.image"] == "img:1"
    # tolerations only through the pod template; it is a valid Pod
    template = executor_pod_template(spot)
    assert template["spec"]["tolerations"] == spot.tolerations
    path = tmp_path / "executor-pod.yaml"
    path.write_text(yaml.safe_dump(template))
    kubernetes_validate(path)
    driver = k8s_driver_config(conf)
    assert Path(driver["spark.kubernetes.executor.podTemplateFile"]).exists()
    assert driver["spark.driver.host"]
    # a laptop's master gets none of it
    assert not any(k.startswith(("spark.kubernetes", "spark.dynamic"))
                   for k in spark_config("local[*,4]"))


def test_settings_that_change_a_task_travel_to_the_executors(monkeypatch):
    from robolake_resources.spark import spark_config

    monkeypatch.delenv("ROBOLAKE_CAMERA_BRIGHTNESS", raising=False)
    assert not any(k.startswith("spark.executorEnv.") for k in spark_config("local[2]"))
    monkeypatch.setenv("ROBOLAKE_CAMERA_BRIGHTNESS", "on")
    conf = spark_config("k8s://https://kubernetes.default.svc:443", image="img:1")
    assert conf["spark.executorEnv.ROBOLAKE_CAMERA_BRIGHTNESS"] == "on"
    # the chart's values start executors from the code location's own image
    [deployment] = HELM_VALUES["dagster-user-deployments"]["deployments"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["ROBOLAKE_SPARK_MASTER"].startswith("k8s://")
    image = deployment["image"]
    assert env["ROBOLAKE_SPARK_IMAGE"] == f"{image['repository']}:{image['tag']}"
