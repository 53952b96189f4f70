"""MLflow: where runs and models are tracked, what is logged, and model lineage.

Embedded default: with `MLFLOW_TRACKING_URI` unset, tracking and the model
registry live in a SQLite file `<lake>/mlflow/mlflow.db` and artifacts under
`<lake>/mlflow/artifacts` (for an S3 lake: `./mlflow/mlflow.db` next to the
process, artifacts under the lake's `mlflow/artifacts` prefix). Setting the
standard `MLFLOW_TRACKING_URI` points everything at a shared MLflow server
instead, which then chooses where artifacts go.

Each model config has an experiment `robolake/<model name>`; its registered
model has the config's name. A version carries its lineage as tags: dataset
name, version and spec hash, code version (git commit, `-dirty` with local
changes, else the package version), config hash and training run key.
Training runs log every config setting as a param and per-step metrics in
batches (flushed at checkpoints, so a resumed run rarely repeats a step).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import subprocess
import time
import warnings
from pathlib import Path

from robolake.models.metrics import NullTracker
from robolake.storage import LocalStore, Store

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no phoning home from a lake

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402

PRODUCTION_ALIAS = "production"
REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_PARAMS_PER_BATCH = 100


def tracking_uri(lake: Store) -> str:
    """MLFLOW_TRACKING_URI if set, else the embedded SQLite file for this lake."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    base = lake.root if isinstance(lake, LocalStore) else Path.cwd()
    db = base / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def artifact_location(lake: Store, experiment: str) -> str | None:
    """Where a new experiment's artifacts go: under the lake, unless a server decides."""
    if os.environ.get("MLFLOW_TRACKING_URI") and not os.environ["MLFLOW_TRACKING_URI"].startswith(
            "sqlite:"):
        return None
    folder = experiment.replace("/", "-")
    if isinstance(lake, LocalStore):
        return (lake.root / "mlflow" / "artifacts" / folder).as_uri()
    return f"{lake.uri}/mlflow/artifacts/{folder}"


def configure(lake: Store) -> MlflowClient:
    """Point the mlflow module (tracking and registry) at this lake's server; a client."""
    uri = tracking_uri(lake)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name(model_name: str) -> str:
    return f"robolake/{model_name}"


# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and a new
# experiment opens on the GenAI traces overview instead of the training runs
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# what `make mlflow` serves when the tracking store is a local file
LOCAL_UI = "http://127.0.0.1:5000"


def ensure_experiment(client: MlflowClient, lake: Store, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            exp_id = client.create_experiment(name, artifact_location=artifact_location(lake, name),
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            exp_id = client.get_experiment_by_name(name).experiment_id
        return exp_id
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag: the runs view too
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def ui_command(lake: Store) -> str:
    """How a person sees the runs and models."""
    uri = tracking_uri(lake)
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri}"


def ui_url(lake: Store, run_id: str = "", experiment_id: str = "") -> str:
    """A link to a run (or an experiment's runs view) in the MLflow UI: the tracking server
    itself, or `make mlflow`'s address for the embedded store."""
    uri = tracking_uri(lake)
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    if run_id and not experiment_id:
        experiment_id = configure(lake).get_run(run_id).info.experiment_id
    if not experiment_id:
        return base
    return f"{base}/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")


@functools.cache
def code_version() -> str:
    """The git commit of the code (with -dirty for local changes), else the package version."""
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        try:
            return f"robolake=={importlib.metadata.version('robolake')}"
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


def lineage_tags(config, manifest: dict, run_key: str = "") -> dict[str, str]:
    tags = {
        "dataset.name": manifest["name"],
        "dataset.version": manifest["version"],
        "dataset.spec_hash": manifest.get("spec_hash", ""),
        "dataset.uri": f"datasets/{manifest['name']}/{manifest['version']}",
        "code.version": code_version(),
        "robolake.config_name": config.name,
        "robolake.config_hash": config.config_hash,
        "robolake.architecture": config.model.architecture,
    }
    if run_key:
        tags["robolake.run_key"] = run_key
    commit = tags["code.version"].removesuffix("-dirty")
    if len(commit) == 40:
        tags["mlflow.source.git.commit"] = commit
    return tags


def log_dataset_input(client: MlflowClient, run_id: str, lake: Store, manifest: dict,
                      context: str = "training") -> None:
    """Show the dataset version among the run's inputs (MLflow UI "Datasets used")."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    uri = lake.table_uri(f"datasets/{manifest['name']}/{manifest['version']}")
    try:
        with warnings.catch_warnings():  # local paths match two source types; either will do
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
        dataset = MetaDataset(source,
                              name=f"{manifest['name']}@{manifest['version']}",
                              digest=manifest.get("spec_hash", "")[:16] or None)
        client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                [InputTag("mlflow.data.context", context)])])
    except mlflow.exceptions.MlflowException:
        pass  # no source type for this URI: the lineage tags still name the version


class RunTracker(NullTracker):
    """One MLflow run, logged through the client (no global active run), metrics batched."""

    def __init__(self, client: MlflowClient, run_id: str, flush_seconds: float = 30.0):
        self.client, self.run_id = client, run_id
        self._metrics: list[Metric] = []
        self._last_flush = time.monotonic()
        self.flush_seconds = flush_seconds

    @classmethod
    def start_training(cls, config, manifest: dict, io, lake: Store, *, run_key: str,
                       run_id: str | None, world_size: int, n_params: int) -> RunTracker:
        client = configure(lake)
        if run_id is not None:
            try:
                client.update_run(run_id, status="RUNNING")
                return cls(client, run_id)
            except mlflow.exceptions.MlflowException:
                pass  # the tracking server was reset: start a new run
        exp = ensure_experiment(client, lake, experiment_name(config.name))
        tags = {**lineage_tags(config, manifest, run_key), "robolake.kind": "training",
                "mlflow.runName": f"train-{config.name}"}
        run = client.create_run(exp, tags=tags, run_name=f"train-{config.name}")
        tracker = cls(client, run.info.run_id)
        params = {**config.flat_params(), "task": io.task, "inputs": ",".join(io.inputs),
                  "world_size": str(world_size), "n_params": str(n_params),
                  "dataset.spec_hash": manifest.get("spec_hash", ""),
                  "dataset.train_samples": str(
                      manifest["splits"][config.dataset.splits.train]["samples"])}
        tracker.log_params(params)
        log_dataset_input(client, tracker.run_id, lake, manifest)
        return tracker

    def log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def flush(self) -> None:
        for i in range(0, len(self._metrics), 1000):
            self.client.log_batch(self.run_id, metrics=self._metrics[i:i + 1000])
        self._metrics = []
        self._last_flush = time.monotonic()

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


def register_model(tracker: RunTracker, model, config, manifest: dict, run_key: str,
                   extra_tags: dict[str, str] | None = None) -> str:
    """Log the PyTorch model to the training run and register it; returns the version."""
    import mlflow.pytorch
    import torch

    tags = {**lineage_tags(config, manifest, run_key), "robolake.training_run_id": tracker.run_id,
            **(extra_tags or {})}
    # pickle: the registry is ours and the module class lives in robolake; mlflow warns
    # about unpickling untrusted models on every save, which says nothing here
    pytorch_logger = logging.getLogger("mlflow.pytorch")
    level = pytorch_logger.level
    pytorch_logger.setLevel(logging.ERROR)
    try:
        with mlflow.start_run(run_id=tracker.run_id):
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=config.name,
                serialization_format="pickle",  # the module (architectures) and its io
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "robolake"],
                await_registration_for=60)
    finally:
        pytorch_logger.setLevel(level)
    version = str(info.registered_model_version)
    client = tracker.client
    for key, value in tags.items():
        client.set_model_version_tag(config.name, version, key, value)
    client.update_model_version(
        config.name, version,
        description=f"{config.model.architecture} on {manifest['name']} {manifest['version']} "
                    f"(code {tags['code.version'][:12]})")
    return version


def production_version(client: MlflowClient, name: str):
    """The registered version at alias `production`, or None."""
    try:
        return client.get_model_version_by_alias(name, PRODUCTION_ALIAS)
    except mlflow.exceptions.MlflowException:
        return None


def load_model_version(name: str, version: str):
    import mlflow.pytorch

    return mlflow.pytorch.load_model(f"models:/{name}/{version}", map_location="cpu")


def latest_version(client: MlflowClient, name: str) -> str | None:
    versions = client.search_model_versions(f"name = '{name}'")
    return str(max(int(v.version) for v in versions)) if versions else None
