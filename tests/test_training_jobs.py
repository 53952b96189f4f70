"""Multi-node training: `distributed.nnodes` is validated, a multi-node config renders a
PyTorchJob that validates strictly against the training-operator's own CRD (v1.9.0, kept
in deploy/training/crds/) and its webhook rules, lands in the team's Kueue LocalQueue with
the training priority and the recommender's GPU request, and the training asset submits
it on k8s only; locally the same world size runs under torchrun on one node.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes
import pytest
import yaml

from robolake.errors import CapacityLost, is_transient
from robolake.models.config import ConfigError, load_config, parse_config
from robolake.models.synthetic import small_config, write_synthetic_dataset
from robolake.storage import open_store
from robolake_resources import kueue, pools, team_rbac, training_jobs
from robolake_resources.placement import training_placement
from tests.test_deploy import _core_validator
from tests.test_kueue import DOCS as KUEUE_DOCS
from tests.test_kueue import _strict

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "training" / "imu_gps_demo.yaml"
CRD = REPO / "deploy" / "training" / "crds" / "kubeflow.org_pytorchjobs.yaml"
IMAGE = "registry.example.com/robolake/code-location:0.1.0"


def _demo(**distributed) -> dict:
    data = yaml.safe_load(DEMO.read_text())
    data["distributed"] = distributed
    return data


def _crd_validator() -> jsonschema.Validator:
    crd = yaml.safe_load(CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["served"]]
    assert (crd["spec"]["group"], version["name"]) == (training_jobs.API_GROUP,
                                                       training_jobs.API_VERSION)
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked below
    return jsonschema.Draft202012Validator(schema)


CRD_VALIDATOR = _crd_validator()
OBJECT_META = _core_validator("objectmeta-meta-v1.json")
POD_TEMPLATE = _core_validator("podtemplatespec-v1.json")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def webhook_problems(job: dict) -> list[str]:
    """The operator's admission webhook (pkg/webhooks/pytorch, v1.9.0), written out."""
    problems = []
    if not DNS1035.match(job["metadata"]["name"]) or len(job["metadata"]["name"]) > 63:
        problems.append("metadata.name: not a DNS-1035 label")
    for kind, spec in job["spec"]["pytorchReplicaSpecs"].items():
        containers = spec["template"]["spec"]["containers"]
        if kind not in ("Master", "Worker"):
            problems.append(f"{kind}: not Master or Worker")
        if not any(c["name"] == "pytorch" for c in containers):
            problems.append(f"{kind}: no container named pytorch")
        if any(not c.get("image") for c in containers):
            problems.append(f"{kind}: a container without image")
        if kind == "Master" and spec.get("replicas") != 1:
            problems.append("Master.replicas must be 1")
        if kind == "Worker" and spec.get("replicas", 1) < 1:
            problems.append("Worker.replicas must be at least 1")
    return problems


def validate(job: dict) -> None:
    CRD_VALIDATOR.validate(job)
    OBJECT_META.validate(job["metadata"])
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        POD_TEMPLATE.validate(spec["template"])  # built-in strict schema of the pod template
    assert not webhook_problems(job), webhook_problems(job)


# --------------------------------------------------------------------------- the config


@pytest.mark.parametrize("field,value,message", [
    ("nnodes", 0, "distributed.nnodes: Input should be greater than or equal to 1 (got 0)"),
    ("nproc_per_node", 0,
     "distributed.nproc_per_node: Input should be greater than or equal to 1 (got 0)"),
    ("nnodes", "two", "distributed.nnodes: Input should be a valid integer"),
])
def test_distributed_fields_are_validated(tmp_path, field, value, message):
    path = tmp_path / "multi.yaml"
    path.write_text(yaml.safe_dump(_demo(**{field: value})))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: {message}")


def test_nnodes_keeps_old_config_hashes_and_world_size():
    demo = load_config(DEMO)
    assert demo.distributed.nnodes == 1 and demo.distributed.world_size == 1
    one = parse_config(_demo(nnodes=1, nproc_per_node=1))
    # written before `nnodes` existed, or with nnodes: 1: the same config (and checkpoints)
    assert one.config_hash == parse_config(_demo(nproc_per_node=1)).config_hash
    multi = parse_config(_demo(nnodes=3, nproc_per_node=2))
    assert multi.config_hash != one.config_hash and multi.distributed.world_size == 6
    assert multi.for_dataset_version("1.0.0").distributed.nnodes == 3


# --------------------------------------------------------------------------- the PyTorchJob


@pytest.fixture(scope="module")
def multi():
    config = parse_config(_demo(nnodes=3, nproc_per_node=2), "multi.yaml")
    placement, sizing = training_placement(config, REPO / "specs")
    assert sizing.startswith("GPU request sized by `robolake recommend`: 2 GPU(s)")
    job = training_jobs.pytorchjob_manifest(
        config, placement, image=IMAGE, team="perception",
        env={"ROBOLAKE_LAKE": "s3://lake/x", "ROBOLAKE_DEPLOYMENT": "k8s"})
    return config, placement, job


def test_pytorchjob_validates_against_the_operators_crd(multi):
    config, placement, job = multi
    validate(job)
    text = CRD.parent.joinpath("README.md").read_text()
    assert training_jobs.TRAINING_OPERATOR_VERSION in text
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["nodeSelektor"] = {}
    with pytest.raises(jsonschema.ValidationError, match="nodeSelektor"):
        validate(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["runPolicy"]["suspended"] = True
    with pytest.raises(jsonschema.ValidationError, match="suspended"):
        validate(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "name"] = "trainer"
    assert webhook_problems(bad) == ["Master: no container named pytorch",
                                     "Master.replicas must be 1"]


def test_pytorchjob_is_gang_admitted_in_the_team_queue_with_the_sized_gpus(multi):
    config, placement, job = multi
    pool = pools.POOLS[placement["op_tags"]["robolake/pool"]]
    assert pool.name == "gpu_high"
    meta = job["metadata"]
    assert meta["namespace"] == "team-perception"
    assert meta["labels"][pools.KUEUE_QUEUE_LABEL] == "gpu-high"
    assert meta["labels"][pools.KUEUE_PRIORITY_LABEL] == "robolake-training"
    assert job["spec"]["runPolicy"]["suspend"] is True  # nothing starts before admission
    assert job["spec"]["nprocPerNode"] == "2"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 2}
    for spec in replicas.values():
        pod = spec["template"]
        [container] = pod["spec"]["containers"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert pod["spec"]["nodeSelector"] == pool.node_selector
        assert pod["spec"]["tolerations"] == pool.tolerations
        [term] = pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term["matchExpressions"][0]["values"] == ["p4d.24xlarge", "p4de.24xlarge",
                                                         "p5.48xlarge"]
        assert pod["metadata"]["labels"][pools.KUEUE_QUEUE_LABEL] == "gpu-high"
        assert container["command"][:5] == ["python", "-m", "torch.distributed.run",
                                            "--nnodes=3", "--nproc_per_node=2"]
        assert container["command"][5:7] == ["-m", "robolake.models.torchrun_entry"]
        args = dict(zip(container["command"][7::2], container["command"][8::2], strict=True))
        assert parse_config(json.loads(args["--config-json"])).config_hash == config.config_hash
        assert args["--run-key"] == f"{config.config_hash[:12]}-w6"
        assert {e["name"]: e["value"] for e in container["env"]}["ROBOLAKE_LAKE"] == "s3://lake/x"
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
        assert pod["spec"]["serviceAccountName"] == team_rbac.SERVICE_ACCOUNT
    # the LocalQueue exists, and its ClusterQueue can hold the whole gang at once
    [local] = [d for d in KUEUE_DOCS if d["kind"] == "LocalQueue" and d["metadata"] == {
        **d["metadata"], "namespace": "team-perception", "name": "gpu-high"}]
    [cq] = [d for d in KUEUE_DOCS if d["metadata"]["name"] == local["spec"]["clusterQueue"]]
    [gpu] = [r for r in cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"]
             if r["name"] == "nvidia.com/gpu"]
    assert int(gpu["nominalQuota"]) >= 3 * 2 == config.distributed.world_size
    assert kueue.TEAMS["perception"]["gpu_high"] == 1


def test_an_unsized_config_gets_the_default_gpu_pool_and_team():
    config = parse_config(_demo(nnodes=2, nproc_per_node=1))
    placement, sizing = training_placement(config, None)  # no dataset spec: not sized
    assert sizing == "GPU request: the default (no dataset spec to size it)"
    job = training_jobs.pytorchjob_manifest(config, placement, image=IMAGE)
    validate(job)
    assert job["metadata"]["namespace"] == "team-platform"  # an untagged run's team
    assert job["metadata"]["labels"][pools.KUEUE_QUEUE_LABEL] == "gpu-standard"
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert "affinity" not in pod["spec"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1


def test_the_team_service_account_may_submit_it(multi):
    *_, job = multi
    rbac = [d for d in yaml.safe_load_all((REPO / "deploy" / "teams" / "rbac.yaml").read_text())
            if d]
    [role] = [d for d in rbac if d["kind"] == "Role" and d["metadata"]["name"] ==
              "robolake-training" and d["metadata"]["namespace"] == job["metadata"]["namespace"]]
    assert {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"]} in role["rules"]


# --------------------------------------------------------------------------- the decision


def test_the_asset_submits_a_pytorchjob_only_on_k8s_with_several_nodes():
    from robolake_assets.models import build_training_asset

    multi = parse_config(_demo(nnodes=2, nproc_per_node=1))
    single = parse_config(_demo(nproc_per_node=2))
    assert training_jobs.submits_pytorchjob(multi, "k8s")
    assert not training_jobs.submits_pytorchjob(multi, "local")
    assert not training_jobs.submits_pytorchjob(single, "k8s")
    # the step of a multi-node config only waits: a CPU pod; the GPUs are the job's
    pool_of = [build_training_asset(DEMO, c, REPO / "specs").op.tags["robolake/pool"]
               for c in (multi, single)]
    assert pool_of == ["cpu_on_demand", "gpu_high"]


class RecordingCustomObjects:
    """The CustomObjectsApi calls submit_and_wait makes, kept in memory (no cluster here):
    a created job succeeds (or fails) after `polls` reads."""

    def __init__(self, outcome: str, polls: int = 2):
        self.jobs, self.outcome, self.polls, self.calls = {}, outcome, polls, []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", body["metadata"]["name"]))
        if body["metadata"]["name"] in self.jobs:
            raise kubernetes.client.ApiException(status=409)
        self.jobs[body["metadata"]["name"]] = {**body, "reads": 0}

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.jobs:
            raise kubernetes.client.ApiException(status=404)
        job = self.jobs[name]
        job["reads"] += 1
        done = job["reads"] > self.polls
        return {**job, "status": {"conditions": [
            {"type": self.outcome if done else "Running", "status": "True"}]}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name,
                                        propagation_policy):
        self.calls.append(("delete", name))
        del self.jobs[name]


class JobPods:
    """CoreV1Api.list_namespaced_pod for the job's pods, as the client returns them."""

    def __init__(self, *pods: kubernetes.client.V1Pod):
        self.pods, self.selectors = list(pods), []

    def list_namespaced_pod(self, namespace, label_selector):
        self.selectors.append((namespace, label_selector))
        return kubernetes.client.V1PodList(items=self.pods)


def _pod(name: str, phase: str, **status) -> kubernetes.client.V1Pod:
    return kubernetes.client.V1Pod(metadata=kubernetes.client.V1ObjectMeta(name=name),
                                   status=kubernetes.client.V1PodStatus(phase=phase, **status))


def test_train_step_on_k8s_submits_waits_and_reads_rank0s_summary(tmp_path, multi):
    config, placement, _ = multi
    store = open_store(tmp_path / "lake")
    store.write_bytes(training_jobs.result_key(config), json.dumps(
        {"model": config.name, "version": "4", "world_size": 6}).encode())
    api, lines = RecordingCustomObjects("Succeeded"), []
    summary = training_jobs.train_step(store, config, placement, deployment="k8s",
                                       team="perception", image=IMAGE, log=lines.append,
                                       api=api, poll_s=0)
    assert summary == {"model": config.name, "version": "4", "world_size": 6}
    assert api.calls == [("create", training_jobs.job_name(config))]
    assert api.jobs[training_jobs.job_name(config)]["spec"]["pytorchReplicaSpecs"][
        "Worker"]["replicas"] == 2
    # a retried step finds its job (same run key) and does not start a second one
    training_jobs.train_step(store, config, placement, deployment="k8s", team="perception",
                             image=IMAGE, log=lines.append, api=api, poll_s=0)
    assert api.calls[-1] == ("create", training_jobs.job_name(config)) and len(api.jobs) == 1
    assert any("exists (same run key)" in line for line in lines)
    failing = RecordingCustomObjects("Failed", polls=0)
    crashed = JobPods(_pod("master-0", "Failed", reason="Error"), _pod("worker-0", "Running"))
    with pytest.raises(RuntimeError, match="PyTorchJob team-perception/train-imu-gps-demo-"
                       ) as failed:
        training_jobs.train_step(store, config, placement, deployment="k8s", team="perception",
                                 image=IMAGE, log=lines.append, api=failing, core=crashed,
                                 poll_s=0)
    # its own failure (a crash, an OOM kill): not capacity, so not retried as such
    assert not isinstance(failed.value, CapacityLost)
    assert crashed.selectors == [("team-perception", "training.kubeflow.org/job-name="
                                  + training_jobs.job_name(config))]
    # a Spot reclaim took a worker's node: lost capacity, which the pool's policy retries
    reclaimed = JobPods(_pod("master-0", "Failed", reason="Error"), _pod(
        "worker-1", "Failed", conditions=[kubernetes.client.V1PodCondition(
            type="DisruptionTarget", status="True", reason="TerminationByKubelet",
            message="Pod was terminated in response to imminent node shutdown.")]))
    with pytest.raises(CapacityLost, match="worker-1: TerminationByKubelet: Pod was "):
        # the failed job is replaced, not waited on again
        training_jobs.train_step(store, config, placement, deployment="k8s", team="perception",
                                 image=IMAGE, log=lines.append, api=failing, core=reclaimed,
                                 poll_s=0)
    assert is_transient(CapacityLost("x"))
    assert [c[0] for c in failing.calls] == ["create", "create", "delete", "create"]
    with pytest.raises(ValueError, match="ROBOLAKE_TRAINING_IMAGE"):
        training_jobs.train_step(store, config, placement, deployment="k8s", team=None,
                                 image=None, api=api)


def test_locally_a_multi_node_config_runs_its_world_size_on_one_node(tmp_path):
    from robolake.models.pipeline import launch_torchrun, local_processes

    store = open_store(tmp_path / "lake")
    write_synthetic_dataset(store, "scenes", kind="scenario", seed=1,
                            samples={"train": 64, "val": 16, "test": 16})
    config = small_config("multi", "scenes", training={"epochs": 1, "batch_size": 16},
                          distributed={"nnodes": 2, "nproc_per_node": 1, "backend": "gloo"})
    assert local_processes(config) == 2
    path = tmp_path / "multi.json"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    ranks = launch_torchrun(store, path, local_processes(config), log=lambda m: None,
                            extra_args=["--no-mlflow", "--stop-after-steps", "1"], timeout=120)
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    # the run key (checkpoints) is the one the PyTorchJob of this config would use
    assert {r["run_key"] for r in ranks} == {training_jobs.run_key(config)}
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
