"""Kueue on the cluster: deploy/kueue/ validates against Kueue's own CRD schemas (release
v0.19.2, kept in deploy/kueue/crds/) and the built-in Kubernetes schemas, and every step Job
of the code location, built offline the way the executor builds it, lands in its team's
LocalQueue for its pool with the run queue's priority and the right GPU request.
"""

from __future__ import annotations

import copy
from pathlib import Path

import dagster as dg
import jsonschema
import kubernetes
import pytest
import yaml
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.executor.init import InitExecutorContext
from dagster._core.test_utils import instance_for_test
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from robolake_resources import executors, kueue, pools
from tests.test_deploy import _core_validator, kubernetes_validate
from tests.test_pools_k8s import JOB_CONFIG, steps_in_defs

KUEUE = Path(__file__).resolve().parents[1] / "deploy" / "kueue"
DOCS = [d for d in yaml.safe_load_all((KUEUE / "queues.yaml").read_text()) if d]


def _strict(schema: dict) -> dict:
    """A CRD schema as the API server's strict field validation reads it: an object with
    declared properties takes no others (unless it preserves unknown fields)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validators() -> dict[tuple[str, str], jsonschema.Validator]:
    validators = {}
    for path in sorted((KUEUE / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta below
                validators[(f"{group}/{version['name']}", kind)] = \
                    jsonschema.Draft202012Validator(schema)
    return validators


VALIDATORS = crd_validators()
OBJECT_META = _core_validator("objectmeta-meta-v1.json")


def check_cel_rules(doc: dict) -> list[str]:
    """The ClusterQueue's x-kubernetes-validations (CEL) rules, written out in Python."""
    spec, problems = doc.get("spec", {}), []
    if doc["kind"] != "ClusterQueue":
        return problems
    for group in spec.get("resourceGroups", []):
        for flavor in group["flavors"]:
            if len(flavor["resources"]) != len(group["coveredResources"]):
                problems.append(f"{flavor['name']}: resources != coveredResources")
            if "cohortName" not in spec and any("borrowingLimit" in r
                                                for r in flavor["resources"]):
                problems.append("borrowingLimit must be nil when cohort is empty")
    preemption = spec.get("preemption", {})
    if preemption.get("reclaimWithinCohort") == "Never" and preemption.get(
            "borrowWithinCohort", {}).get("policy", "Never") != "Never":
        problems.append("reclaimWithinCohort Never with borrowWithinCohort")
    return problems


def validate(doc: dict) -> None:
    validator = VALIDATORS[(doc["apiVersion"], doc["kind"])]
    validator.validate(doc)
    OBJECT_META.validate(doc["metadata"])
    assert not check_cel_rules(doc), check_cel_rules(doc)


def test_queues_yaml_is_generated_from_the_pools():
    text = (KUEUE / "queues.yaml").read_text()
    assert text == kueue.render(), "regenerate: python -m robolake_resources.kueue > " \
                                   "deploy/kueue/queues.yaml"
    assert f"Kueue {kueue.KUEUE_VERSION}" in text
    assert kueue.KUEUE_VERSION in (KUEUE / "crds" / "README.md").read_text()


def test_every_object_validates_against_kueues_crds_and_kubernetes(tmp_path):
    kinds = {}
    builtins = []
    for doc in DOCS:
        kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
        if doc["apiVersion"].startswith("kueue.x-k8s.io/"):
            validate(doc)
        else:
            builtins.append(doc)
    teams, n_pools = len(kueue.TEAMS), len(pools.POOLS)
    assert {k: len(v) for k, v in kinds.items()} == {
        "ResourceFlavor": n_pools, "WorkloadPriorityClass": 4, "Cohort": 1 + teams,
        "Namespace": teams, "ClusterQueue": teams * n_pools, "LocalQueue": teams * n_pools}
    (tmp_path / "builtins.yaml").write_text(yaml.safe_dump_all(builtins))
    kubernetes_validate(tmp_path / "builtins.yaml", KUEUE / "kueue-config.yaml")


def test_strict_validation_rejects_what_kueue_would():
    queue = copy.deepcopy(next(d for d in DOCS if d["kind"] == "ClusterQueue"))
    queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0]["nominalQuotta"] = "1"
    with pytest.raises(jsonschema.ValidationError, match="nominalQuotta"):
        validate(queue)
    queue = copy.deepcopy(next(d for d in DOCS if d["kind"] == "ClusterQueue"))
    queue["spec"]["queueingStrategy"] = "FIFO"
    with pytest.raises(jsonschema.ValidationError, match="FIFO"):
        validate(queue)
    del queue["spec"]["cohortName"]
    queue["spec"]["queueingStrategy"] = "StrictFIFO"
    assert check_cel_rules(queue) == ["borrowingLimit must be nil when cohort is empty"]
    with pytest.raises(jsonschema.ValidationError):
        OBJECT_META.validate({"name": "x", "labelz": {}})


def test_gang_admission_and_priorities():
    config = yaml.safe_load(yaml.safe_load((KUEUE / "kueue-config.yaml").read_text())[
        "data"]["controller_manager_config.yaml"])
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    wait = config["waitForPodsReady"]
    assert wait["blockAdmission"] is True and wait["timeout"] == "10m"
    assert {"batch/job", "kubeflow.org/pytorchjob", "jobset.x-k8s.io/jobset"} <= set(
        config["integrations"]["frameworks"])
    values = {q: pools.priority_value(q) for q in pools.QUEUES}
    assert values["interactive"] > values["training"] > values["etl"] > values["batch"]
    wpc = {d["metadata"]["name"]: d["value"] for d in DOCS
           if d["kind"] == "WorkloadPriorityClass"}
    assert wpc == {f"robolake-{q}": v for q, v in values.items()}
    for queue in (d for d in DOCS if d["kind"] == "ClusterQueue"):
        borrow = queue["spec"]["preemption"]["borrowWithinCohort"]
        # a borrowing training job may preempt other teams' ETL and batch, never training
        assert values["etl"] == borrow["maxPriorityThreshold"] < values["training"]


def kueue_step(name: str, op_tags: dict, run_tags: dict) -> tuple[str, dict]:
    """(namespace, Job manifest) of a step, merged as KueueStepHandler does: executor base,
    op tags, then the run's Kueue placement."""
    context = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(executors.STEP_K8S_CONFIG))
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(
        op_tags))).merge(executors.kueue_container_context(run_tags, op_tags))
    job = construct_dagster_k8s_job(
        JOB_CONFIG, ["dagster", "api", "execute_step"], f"dagster-step-{name}",
        user_defined_k8s_config=context.run_k8s_config, component="step_worker")
    return context.namespace, kubernetes.client.ApiClient().sanitize_for_serialization(job)


def _quantity(q: str) -> int:
    return int(q.rstrip("Gi"))


@pytest.mark.parametrize("team,queue", [("perception", "training"), ("platform", "etl"),
                                        (None, None)])
def test_every_step_job_lands_in_its_team_queue(team, queue):
    run_tags = {k: v for k, v in ((pools.TEAM_TAG, team), (pools.QUEUE_TAG, queue)) if v}
    team, queue = team or "platform", queue or "interactive"  # an untagged run
    local_queues = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["spec"]["clusterQueue"]
                    for d in DOCS if d["kind"] == "LocalQueue"}
    cluster_queues = {d["metadata"]["name"]: d["spec"] for d in DOCS
                      if d["kind"] == "ClusterQueue"}
    flavors = {d["metadata"]["name"]: d["spec"] for d in DOCS if d["kind"] == "ResourceFlavor"}
    for name, (op_tags, pool_name) in sorted(steps_in_defs().items()):
        pool = pools.POOLS[pool_name]
        namespace, job = kueue_step(name, op_tags, run_tags)
        labels = job["metadata"]["labels"]
        pod = job["spec"]["template"]
        assert namespace == f"team-{team}"
        assert labels[pools.KUEUE_QUEUE_LABEL] == pool.label
        assert labels[pools.KUEUE_PRIORITY_LABEL] == f"robolake-{queue}"
        assert {k: pod["metadata"]["labels"][k] for k in labels if k.startswith("kueue")} == {
            k: v for k, v in labels.items() if k.startswith("kueue")}
        assert pod["metadata"]["labels"][pools.POOL_LABEL] == pool.label  # still merged
        spec = cluster_queues[local_queues[(namespace, pool.label)]]
        [group] = spec["resourceGroups"]
        [flavor] = group["flavors"]
        assert flavors[flavor["name"]]["nodeLabels"] == pod["spec"]["nodeSelector"]
        requests = pod["spec"]["containers"][0]["resources"]["requests"]
        assert requests.get("nvidia.com/gpu") == (str(pool.gpus) if pool.gpus else None), name
        assert set(requests) == set(group["coveredResources"]), name
        for r in flavor["resources"]:  # one step fits in what the queue may use
            assert _quantity(r["nominalQuota"]) + _quantity(r["borrowingLimit"]) >= \
                _quantity(requests[r["name"]]), (name, r)


def test_team_tag_is_checked():
    tags = dict(steps_in_defs()["raw_uploads"][0])
    with pytest.raises(ValueError, match="run tag robolake/team='Perception Team'"):
        executors.kueue_container_context({pools.TEAM_TAG: "Perception Team"}, tags)


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_the_k8s_executor_uses_the_kueue_step_handler(tmp_path):
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)  # read, never contacted
    executor_def = executors.robolake_executor("k8s")

    @dg.job(executor_def=executor_def)
    def probe():
        pass

    with instance_for_test() as instance:
        executor = executor_def.executor_creation_fn(InitExecutorContext(
            job=InMemoryJob(probe), executor_def=executor_def,
            executor_config=executors.K8S_EXECUTOR_CONFIG | {
                "load_incluster_config": False, "kubeconfig_file": str(tmp_path / "kubeconfig")},
            instance=instance))
    handler = executor._step_handler
    assert type(handler).__name__ == "KueueStepHandler" and handler.name == "K8sStepHandler"
