"""Multi-node training on Kubernetes: a Kubeflow PyTorchJob, gang-admitted by Kueue.

A training config with `distributed.nnodes` > 1, materialized on the `k8s` deployment,
does not train in its step pod: the training asset renders a PyTorchJob
(`kubeflow.org/v1`, training-operator v1.9.0; CRD kept in deploy/training/crds/) with one
Master and `nnodes - 1` Worker pods, each running
`torchrun --nnodes=N --nproc_per_node=P -m robolake.models.torchrun_entry` (the operator
sets the node rank and master address as torchrun's PET_* variables), submits it in the
team's namespace and waits for it. Every pod gets the step's own placement (the GPU
request the instance recommender sized, the GPU pool's node selector, tolerations and
instance types: `robolake_resources.placement`); the PyTorchJob carries the team's
LocalQueue for that pool and the training WorkloadPriorityClass, so Kueue admits all its
pods together or none (one Workload, waitForPodsReady in deploy/kueue/kueue-config.yaml).

Rank 0 registers the model as on one node and writes its summary to the lake
(`result_key`), which the asset reads back. The job name is derived from the run key
(config hash and world size): a retried step finds its own job instead of starting a
second one; a failed one is replaced (training resumes from the lake's checkpoints). A job
that failed because Kubernetes took one of its pods away (a Spot reclaim, a lost node,
an eviction: `robolake.costs.spot.pod_disruption`) fails the step with `CapacityLost`,
which the GPU pool's retry policy retries; any other failure is the job's own.
Anywhere else (`local`), the same config runs its `nnodes x nproc_per_node` processes
under torchrun on one node (robolake.models.pipeline.train_model).
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

from robolake.errors import CapacityLost
from robolake.models.config import TrainingConfig
from robolake.settings import ENV_VARS
from robolake_resources import pools
from robolake_resources.spot import failed_pod_disruption

API_GROUP, API_VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
TRAINING_OPERATOR_VERSION = "v1.9.0"  # the CRD in deploy/training/crds/ is this release's
CONTAINER = "pytorch"  # the operator's webhook requires a container of this name
PORT_NAME, PORT = "pytorchjob-port", 23456  # the operator reads MASTER_PORT from this port
SERVICE_ACCOUNT = "robolake"  # per team namespace: deploy/teams/rbac.yaml
# what the pods need of the step's environment (settings, MLflow, AWS region)
PASSED_ENV = (*ENV_VARS.values(), "MLFLOW_TRACKING_URI", "AWS_REGION")


def submits_pytorchjob(config: TrainingConfig, deployment: str) -> bool:
    """The training asset's choice: a PyTorchJob on Kubernetes for a multi-node config;
    otherwise training in the step (torchrun on this node when > 1 process)."""
    return deployment == "k8s" and config.distributed.nnodes > 1


def run_key(config: TrainingConfig) -> str:
    """The checkpoint namespace: the same as a one-node run of the same world size."""
    from robolake.models.train import default_run_key  # torch: only where it is used

    return default_run_key(config, config.distributed.world_size)


def job_name(config: TrainingConfig) -> str:
    """A DNS-1035 label from the model name and run key (pods add `-worker-N`)."""
    slug = re.sub(r"[^a-z0-9-]", "-", config.name.lower())[:28].strip("-")
    return f"train-{slug}-{run_key(config)}"


def result_key(config: TrainingConfig) -> str:
    return f"models/{config.name}/checkpoints/{run_key(config)}/pytorchjob-result.json"


def step_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in PASSED_ENV if environ.get(k)}


def _pod_template(k8s_config: dict[str, Any], container: dict[str, Any],
                  labels: dict[str, str]) -> dict[str, Any]:
    """A pod template (API field names) from a pool's dagster-k8s config (snake_case, as
    the step Jobs get it) and the training container."""
    import kubernetes
    from dagster_k8s.models import k8s_model_from_dict

    meta = k8s_config.get("pod_template_spec_metadata", {})
    resources = k8s_config.get("container_config", {}).get("resources", {})
    spec = {**k8s_config.get("pod_spec_config", {}), "service_account_name": SERVICE_ACCOUNT,
            "restart_policy": "Never", "containers": [{**container, "resources": resources}]}
    template = {"metadata": {"labels": {**meta.get("labels", {}), **labels},
                             "annotations": dict(meta.get("annotations", {}))},
                "spec": spec}
    model = k8s_model_from_dict(kubernetes.client.V1PodTemplateSpec, template)
    return kubernetes.client.ApiClient().sanitize_for_serialization(model)


def pytorchjob_manifest(config: TrainingConfig, placement: dict[str, Any], *, image: str,
                        team: str | None = None, queue: str = "training",
                        env: dict[str, str] | None = None) -> dict[str, Any]:
    """The PyTorchJob of a multi-node config. `placement`: the training asset's pool
    keyword arguments (`robolake_resources.placement.training_placement`)."""
    dist = config.distributed
    tags = placement["op_tags"]
    pool = pools.POOLS[tags["robolake/pool"]]
    team = pools.team_name(team or pools.DEFAULT_TEAM)
    labels = {**pool.kueue_config(team, queue)["job_metadata"]["labels"],
              "robolake/model": config.name}
    args = ["python", "-m", "torch.distributed.run", f"--nnodes={dist.nnodes}",
            f"--nproc_per_node={dist.nproc_per_node}", "-m", "robolake.models.torchrun_entry",
            "--config-json", json.dumps(config.model_dump(mode="json"), sort_keys=True),
            "--run-key", run_key(config), "--result-key", result_key(config)]
    container = {"name": CONTAINER, "image": image, "command": args,
                 "env": [{"name": k, "value": v} for k, v in sorted((env or {}).items())],
                 "ports": [{"name": PORT_NAME, "container_port": PORT}]}
    template = _pod_template(tags["dagster-k8s/config"], container, labels)
    replicas = {"Master": 1, "Worker": dist.nnodes - 1}
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "PyTorchJob",
        "metadata": {"name": job_name(config), "namespace": pools.team_namespace(team),
                     "labels": labels},
        "spec": {
            "nprocPerNode": str(dist.nproc_per_node),
            # suspended until Kueue admits every pod at once; a failure ends the job
            # (Dagster's retry policy resubmits it, resuming from the lake's checkpoints)
            "runPolicy": {"suspend": True, "backoffLimit": 0, "cleanPodPolicy": "Running",
                          "ttlSecondsAfterFinished": 3600},
            "pytorchReplicaSpecs": {kind: {"replicas": n, "restartPolicy": "Never",
                                           "template": copy.deepcopy(template)}
                                    for kind, n in replicas.items()},
        }}


def job_state(job: dict[str, Any]) -> str | None:
    """Succeeded or Failed once the job is over, else None."""
    for condition in job.get("status", {}).get("conditions", []):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get(
                "status") == "True":
            return condition["type"]
    return None


def submit_and_wait(manifest: dict[str, Any], api=None, *, poll_s: float = 15.0,
                    timeout_s: float | None = None, log: Callable[[str], None] = print) -> str:
    """Create the PyTorchJob (or find the one this run key already created; a failed one
    is replaced) and wait until it is over; returns Succeeded or Failed."""
    import kubernetes

    if api is None:
        kubernetes.config.load_incluster_config()
        api = kubernetes.client.CustomObjectsApi()
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    where = (API_GROUP, API_VERSION, namespace, PLURAL)
    try:
        api.create_namespaced_custom_object(*where, manifest)
        log(f"submitted PyTorchJob {namespace}/{name}; waiting for Kueue to admit it")
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
        if job_state(api.get_namespaced_custom_object(*where, name)) == "Failed":
            _delete(api, where, name, poll_s)
            api.create_namespaced_custom_object(*where, manifest)
            log(f"replaced the failed PyTorchJob {namespace}/{name}")
        else:
            log(f"PyTorchJob {namespace}/{name} exists (same run key): waiting for it")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while (state := job_state(api.get_namespaced_custom_object(*where, name))) is None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"PyTorchJob {namespace}/{name} not done in {timeout_s} s")
        time.sleep(poll_s)
    return state


def _delete(api, where: tuple, name: str, poll_s: float) -> None:
    """Delete a job and its pods, and wait until it is gone (its name is reused)."""
    import kubernetes

    api.delete_namespaced_custom_object(*where, name, propagation_policy="Foreground")
    while True:
        try:
            api.get_namespaced_custom_object(*where, name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(poll_s)


JOB_NAME_LABEL = "training.kubeflow.org/job-name"  # the operator labels the job's pods


def pytorchjob_pods(placement: dict[str, Any], replicas: int, start_ns: int,
                    end_ns: int) -> dict[str, Any]:
    """What a PyTorchJob's pods held while its step waited (the training asset's
    `pytorchjob_pods` metadata; run_costs_sensor prices each pod like a step)."""
    tags = placement["op_tags"]
    return {"pool": tags["robolake/pool"], "replicas": replicas,
            "requests": pools.k8s_requests(tags), "start_ns": start_ns, "end_ns": end_ns}


def train_step(store, config: TrainingConfig, placement: dict[str, Any], *, deployment: str,
               team: str | None, image: str | None, log: Callable[[str], None] = print,
               api=None, core=None, poll_s: float = 15.0) -> dict[str, Any]:
    """What the training asset runs: the PyTorchJob for a multi-node config on Kubernetes
    (its rank 0's summary), else `pipeline.train_model` in this process (torchrun on this
    node for more than one process)."""
    from robolake.models import pipeline

    if not submits_pytorchjob(config, deployment):
        return pipeline.train_model(store, config, log=log)
    if not image:
        raise ValueError(f"{config.name}: distributed.nnodes={config.distributed.nnodes} needs "
                         "a PyTorchJob image: set ROBOLAKE_TRAINING_IMAGE or run from a "
                         "code location with a container image")
    manifest = pytorchjob_manifest(config, placement, image=image, team=team, env=step_env())
    state = submit_and_wait(manifest, api, poll_s=poll_s, log=log)
    name = f"{manifest['metadata']['namespace']}/{manifest['metadata']['name']}"
    if state != "Succeeded":
        import kubernetes

        namespace, job = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        lost = failed_pod_disruption(core or kubernetes.client.CoreV1Api(), namespace,
                                     f"{JOB_NAME_LABEL}={job}")
        if lost:  # retried by the pool's policy; training resumes from its checkpoints
            raise CapacityLost(f"PyTorchJob {name} {state}: Kubernetes took a pod away "
                               f"({lost})")
        raise RuntimeError(f"PyTorchJob {name} {state} (kubectl -n {namespace} describe "
                           f"pytorchjob {job})")
    summary = json.loads(store.read_bytes(result_key(config)))
    log(f"PyTorchJob {name} succeeded: {summary.get('model')} v{summary.get('version')}")
    return summary
