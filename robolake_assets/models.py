"""Models layer: one training asset and one evaluation asset per training config.

For every training config (`configs/training/*.yaml`, or the settings'
training_configs_dir):

- `model_<name>` is partitioned by dataset version (one dynamic partition per
  registered version of the config's dataset, added when the dataset asset
  registers it): a partition trains the config on that version (the file's
  `dataset.version` is the one `robolake ingest --through models` trains), so the
  UI shows the model's history per dataset version and a backfill retrains a
  chosen one. It depends on the dataset asset `["datasets", <dataset name>]`,
  resumes from the lake's
  checkpoints after a preemption, logs to MLflow, registers the model with its
  lineage and puts the ONNX export beside it. It runs on the GPU pool
  (`pools.gpu()`; `pools.gpu(high=True)` when the config asks for several
  processes, which then run under torchrun).
- `evaluation_<name>` (the same partitions) scores the version its partition of
  the training asset registered last on that dataset version's test split and
  the corner-case subset, compares it with the production model and promotes
  it (MLflow alias `production`) only if it passes the gate; the decision and
  its reasons are the asset's metadata and tags on the model version.

`MODEL_JOBS` run a config's two assets with the training queue's run tags.
The business rules live in robolake.models; these assets only call them.
"""

import os
import time
from pathlib import Path

import dagster as dg

from robolake.costs.budgets import job_owner_tags
from robolake.models.config import TrainingConfig, load_config
from robolake.settings import get_settings
from robolake_assets.helpers import (
    dataset_asset_key,
    markdown_list,
    markdown_table,
    model_column_lineage,
    require_owner_tags,
)
from robolake_assets.metadata import figure, without_blanks
from robolake_partitions import dataset_version_partitions
from robolake_resources import pools, training_jobs
from robolake_resources.lake import LakeResource
from robolake_resources.mlflow import MlflowResource
from robolake_resources.placement import training_placement

GROUP = "models"


def training_configs(directory: Path) -> dict[Path, TrainingConfig]:
    """Every training config in `directory`, validated (a bad one fails loudly at load)."""
    return {path: load_config(path) for path in sorted(directory.glob("*.y*ml"))}


def asset_suffix(config: TrainingConfig) -> str:
    return config.name.replace("-", "_")


def train_job_name(config: TrainingConfig) -> str:
    return f"train_{asset_suffix(config)}"


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _mlflow_link(store, run_id: str | None) -> dg.MetadataValue | None:
    from robolake.models import tracking

    return dg.MetadataValue.url(tracking.ui_url(store, run_id)) if run_id else None


def training_metadata(config: TrainingConfig, summary: dict, store) -> dict:
    """The training asset's metadata: the registered version, its lineage, last metrics.

    The last epoch's metrics carry MLflow's names: `epoch_train_loss` is the epoch's mean
    (MLflow's `train_loss` is the mean of the last `log_every_steps` steps, another figure);
    `data_wait_share` is the whole run's share of step time spent waiting for data."""
    from robolake.models import tracking

    last = summary["history"][-1] if summary.get("history") else {}
    metadata = {
        "model_name": config.name,
        "model_version": str(summary.get("version", "")),
        "mlflow_run_id": summary.get("run_id") or "",
        "mlflow_ui": _mlflow_link(store, summary.get("run_id")),
        "dataset": f"{config.dataset.name} {config.dataset.version}",
        "dataset_spec_hash": summary["dataset"].get("spec_hash") or "",
        "code_version": tracking.code_version(),
        "config_hash": config.config_hash,
        "task": summary["task"],
        "global_step": summary["global_step"],
        "epochs": summary["epochs_completed"],
        "stopped_early": summary["stopped_early"],
        "resumed_from": summary.get("resumed_from") or "",
        "checkpoint": summary.get("checkpoint_key") or "",
        "onnx": summary.get("onnx_key") or "",
        "weights_sha256": summary["weights_sha256"],
        "world_size": summary["world_size"],
    }
    metadata |= {("epoch_train_loss" if k == "train_loss" else k): figure(v)
                 for k, v in last.items() if isinstance(v, float) and k not in ("epoch", "step")}
    metadata |= {k: figure(v) for k, v in summary.get("throughput", {}).items()}
    if summary.get("onnx_max_abs_diff") is not None:
        metadata["onnx_max_abs_diff"] = float(summary["onnx_max_abs_diff"])
    metadata |= model_column_lineage(config.dataset.name, summary.get("inputs") or ())
    return without_blanks(metadata)


def evaluation_metadata(result: dict, store=None) -> dict:
    """The evaluation asset's metadata: the gate's decision and reasons, test metrics."""
    decision, report = result["decision"], result["report"]
    metadata = {
        "decision": decision["verdict"],
        "promoted": decision["promote"],
        "reasons": markdown_list(decision["reasons"]),
        "model_version": result["version"],
        "production_version": str(result.get("production_version") or ""),
        "baseline_version": str(decision.get("baseline_version") or ""),
        "main_metric": decision["main_metric"],
        "main_metric_value": figure(decision["candidate"]),
        "corner_case_failure_rate": _float(decision.get("corner_case_failure_rate")),
        "test_samples": report["samples"],
        "device": report["device"],
        "mlflow_evaluation_run_id": result["evaluation_run_id"],
        "mlflow_ui": _mlflow_link(store, result["evaluation_run_id"]) if store else None,
        "per_scenario": dg.MetadataValue.md(_scenario_table(report["per_scenario"])),
    }
    if decision.get("baseline") is not None:
        metadata["baseline_value"] = figure(decision["baseline"])
        metadata["improvement"] = figure(decision["improvement"])
    metadata |= {f"test_{k}": figure(v) for k, v in report["metrics"].items()}
    metadata |= {k: figure(v) for k, v in report["speed"].items()}
    metadata |= {k: v for k, v in report["onnx"].items()}
    return without_blanks(metadata)


def _scenario_table(per_scenario: dict[str, dict[str, float]]) -> str:
    if not per_scenario:
        return "no samples"
    columns = sorted({k for values in per_scenario.values() for k in values})
    return markdown_table(["scenario", *columns],
                          [(name, *(f"{values[c]:.4g}" if c in values else "" for c in columns))
                           for name, values in per_scenario.items()])


def latest_model_version(instance: dg.DagsterInstance, model_key: dg.AssetKey,
                         partition: str) -> str | None:
    """The model version a partition of the training asset registered last."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=model_key, asset_partitions=[partition]), limit=1).records
    if not records or records[0].asset_materialization is None:
        return None
    entry = records[0].asset_materialization.metadata.get("model_version")
    return str(entry.value) if entry is not None and entry.value else None


def _run_image(context: dg.AssetExecutionContext) -> str | None:
    """The image PyTorchJob pods run: $ROBOLAKE_TRAINING_IMAGE, else the code location's."""
    origin = context.run.job_code_origin
    return os.environ.get("ROBOLAKE_TRAINING_IMAGE") or (
        origin.repository_origin.container_image if origin else None)


def build_training_asset(config_path: Path, config: TrainingConfig,
                         specs_dir: Path | None = None) -> dg.AssetsDefinition:
    """`model_<name>`: train, register and export one config's model."""

    # the recommender sizes the GPU request (one GPU per process, on types that hold the
    # estimated peak); compute routing turns it into the k8s tags
    placement, sizing = training_placement(config, specs_dir)
    # multi-node: on k8s the step only submits a PyTorchJob (GPU pods placed as sized
    # here) and waits for it, so the step pod itself needs no GPU
    step_placement = pools.cpu_on_demand() if config.distributed.nnodes > 1 else placement

    @dg.asset(
        name=f"model_{asset_suffix(config)}",
        group_name=GROUP,
        deps=[dataset_asset_key(config.dataset.name)],
        partitions_def=dataset_version_partitions(config.dataset.name),
        kinds={"pytorch", "mlflow"},
        description=f"{config.model.architecture} trained on a version of "
                    f"{config.dataset.name} (one partition per version; {config_path.name} "
                    f"names {config.dataset.version}); checkpoints in the lake, registered in "
                    f"MLflow as {config.name}. {sizing}",
        tags={"robolake/model": config.name},
        **step_placement,
    )
    def model_asset(context: dg.AssetExecutionContext, lake: LakeResource,
                    mlflow: MlflowResource) -> dg.MaterializeResult:
        require_owner_tags(context)
        mlflow.activate()
        store = lake.store()
        trained = config.for_dataset_version(context.partition_key)
        deployment, started = get_settings().deployment, time.time_ns()
        with pools.retry_only_transient():
            summary = training_jobs.train_step(
                store, trained, placement, deployment=deployment,
                team=context.run.tags.get(pools.TEAM_TAG), image=_run_image(context),
                log=context.log.info)
        metadata = training_metadata(trained, summary, store)
        if training_jobs.submits_pytorchjob(trained, deployment):
            metadata["pytorchjob_pods"] = dg.MetadataValue.json(training_jobs.pytorchjob_pods(
                placement, trained.distributed.nnodes, started, time.time_ns()))
        return dg.MaterializeResult(metadata=metadata)

    return model_asset


def build_evaluation_asset(config_path: Path, config: TrainingConfig,
                           model_key: dg.AssetKey) -> dg.AssetsDefinition:
    """`evaluation_<name>`: score the latest trained version and maybe promote it."""
    from robolake.models import pipeline

    @dg.asset(
        name=f"evaluation_{asset_suffix(config)}",
        group_name=GROUP,
        deps=[model_key],
        partitions_def=dataset_version_partitions(config.dataset.name),
        kinds={"pytorch", "mlflow"},
        description=f"{config.name} on the test split and its corner cases, against the "
                    f"production model; promotes it when it wins by "
                    f"{config.evaluation.margin:.0%} with < "
                    f"{config.evaluation.max_corner_case_failure_rate:.0%} corner-case failures",
        tags={"robolake/model": config.name},
        **pools.gpu(),
    )
    def evaluation_asset(context: dg.AssetExecutionContext, lake: LakeResource,
                         mlflow: MlflowResource) -> dg.MaterializeResult:
        mlflow.activate()
        version = latest_model_version(context.instance, model_key, context.partition_key)
        with pools.retry_only_transient():
            result = pipeline.evaluate_and_promote(
                lake.store(), config.for_dataset_version(context.partition_key), version,
                log=context.log.info)
        return dg.MaterializeResult(metadata=evaluation_metadata(result, lake.store()),
                                    tags={"robolake/promotion": result["decision"]["verdict"]})

    return evaluation_asset


def build_model_assets(config_path: Path, config: TrainingConfig,
                       specs_dir: Path | None = None) -> list[dg.AssetsDefinition]:
    """The training and evaluation assets of one config."""
    training = build_training_asset(config_path, config, specs_dir)
    return [training, build_evaluation_asset(config_path, config, training.key)]


def build_models_layer(directory: Path, specs_dir: Path | None = None
                       ) -> tuple[list[dg.AssetsDefinition], list]:
    """Assets and jobs (`train_<name>`: a config's training and evaluation, training queue)."""
    assets: list[dg.AssetsDefinition] = []
    jobs = []
    for path, config in training_configs(directory).items():
        pair = build_model_assets(path, config, specs_dir)
        assets += pair
        jobs.append(dg.define_asset_job(
            train_job_name(config), selection=dg.AssetSelection.assets(*pair),
            tags={**pools.queue_tags("training"), **job_owner_tags(train_job_name(config))},
            description=f"Train, register, evaluate and maybe promote {config.name}."))
    return assets, jobs

