"""The models layer as Dagster assets: graph shape, pools, and a materialization."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from robolake.models.synthetic import small_config, write_synthetic_dataset
from robolake.storage import open_store
from robolake_resources.lake import LakeResource
from robolake_resources.mlflow import MlflowResource

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_make_training_and_evaluation_assets():
    from robolake_assets.models import build_models_layer

    MODEL_ASSETS, MODEL_JOBS = build_models_layer(REPO / "configs" / "training")

    keys = {key.to_user_string() for a in MODEL_ASSETS for key in a.keys}
    assert {"model_imu_gps_demo", "evaluation_imu_gps_demo"} <= keys
    by_key = {a.key.to_user_string(): a for a in MODEL_ASSETS}
    model = by_key["model_imu_gps_demo"]
    for asset in by_key.values():  # one partition per registered dataset version
        assert asset.partitions_def.name == "dataset_versions_ego_motion_demo"
    assert model.asset_deps[model.key] == {dg.AssetKey(["datasets", "ego_motion_demo"])}
    evaluation = by_key["evaluation_imu_gps_demo"]
    assert evaluation.asset_deps[evaluation.key] == {model.key}
    for asset in (model, evaluation):
        assert asset.group_names_by_key[asset.key] == "models"
        tags = asset.op.tags
        assert tags["robolake/pool"] == "gpu_standard"
        k8s = json.loads(tags["dagster-k8s/config"])  # op tags hold it as JSON text
        assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    job = next(j for j in MODEL_JOBS if j.name == "train_imu_gps_demo")
    assert job.tags["robolake/queue"] == "training"


def _check_mlflow_view(trained: dict, lake) -> None:
    """Issue 17 finding 7: the link opens the run in the experiment's runs view, the
    experiment is a model-development one (MLflow 3 opens its runs, not the GenAI traces),
    and the loss Dagster shows is MLflow's figure of the same name."""
    from robolake.models import tracking

    client = tracking.configure(lake)
    run = client.get_run(trained["mlflow_run_id"].value)
    exp_id = run.info.experiment_id
    assert isinstance(trained["mlflow_ui"], dg.UrlMetadataValue)
    assert trained["mlflow_ui"].value == (
        f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run.info.run_id}")
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == (
        "custom_model_development")
    last_epoch = client.get_metric_history(run.info.run_id, "epoch_train_loss")[-1].value
    assert trained["epoch_train_loss"].value == pytest.approx(last_epoch, rel=1e-3)
    assert "train_loss" not in trained  # MLflow's train_loss is the last steps' mean
    old = client.create_experiment("robolake/made-before-the-tag")
    assert tracking.ensure_experiment(client, lake, "robolake/made-before-the-tag") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == (
        "custom_model_development")


def test_materialize_trains_registers_and_evaluates(tmp_path, monkeypatch):
    from robolake_assets.models import build_models_layer

    lake = open_store(tmp_path / "lake")
    write_synthetic_dataset(lake, "scenes", kind="scenario", seed=5)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    configs = tmp_path / "configs"
    configs.mkdir()
    config = small_config("dag-model", "scenes", training={"epochs": 6},
                          evaluation={"max_corner_case_failure_rate": 0.3})
    (configs / "dag.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assets, jobs = build_models_layer(configs)
    assert [a.key.to_user_string() for a in assets] == ["model_dag_model",
                                                        "evaluation_dag_model"]

    resources = {"lake": LakeResource(root=str(lake.root)),
                 "mlflow": MlflowResource(tracking_uri=uri)}
    with dg.instance_for_test() as instance:
        # the dataset asset adds a partition when it registers a version; here by hand
        instance.add_dynamic_partitions("dataset_versions_scenes", ["1.0.0"])
        result = dg.materialize(assets, instance=instance, resources=resources,
                                partition_key="1.0.0")
        assert result.success
        trained = result.asset_materializations_for_node("model_dag_model")[0].metadata
        assert trained["model_version"].value == "1"
        assert trained["dataset"].value == "scenes 1.0.0"
        # column lineage: the model's IMU input back to the dataset's imu field
        [imu_dep] = trained["dagster/column_lineage"].value.deps_by_column["imu"]
        assert (imu_dep.asset_key.to_user_string(), imu_dep.column_name) == (
            "datasets/scenes", "imu")
        assert trained["global_step"].value == 6 * 15
        assert trained["onnx"].value == "models/dag-model/versions/1/model.onnx"
        _check_mlflow_view(trained, lake)
        assert trained["val_accuracy"].value > 0.7
        assert 0 <= trained["data_wait_share"].value <= 1

        evaluated = result.asset_materializations_for_node("evaluation_dag_model")[0]
        meta = evaluated.metadata
        assert meta["decision"].value == "promoted" and meta["promoted"].value is True
        assert meta["model_version"].value == "1" and meta["production_version"].value == "1"
        assert "no production model yet" in meta["reasons"].value
        assert meta["main_metric"].value == "macro_f1"
        assert meta["test_macro_f1"].value == meta["main_metric_value"].value > 0.7
        assert meta["corner_case_failure_rate"].value < 0.3
        assert "| hard_braking |" in meta["per_scenario"].value
        assert meta["onnx_matches"].value is True
        assert evaluated.tags["robolake/promotion"] == "promoted"

        # a new dataset version is a new partition: training it registers a new model
        # version; each partition keeps its own history
        write_synthetic_dataset(lake, "scenes", version="1.1.0", kind="scenario", seed=6)
        instance.add_dynamic_partitions("dataset_versions_scenes", ["1.1.0"])
        again = dg.materialize(assets, instance=instance, resources=resources,
                               partition_key="1.1.0")
        assert again.success
        trained = again.asset_materializations_for_node("model_dag_model")[0].metadata
        assert trained["dataset"].value == "scenes 1.1.0"
        assert trained["model_version"].value == "2"
        evaluated = again.asset_materializations_for_node("evaluation_dag_model")[0].metadata
        assert evaluated["model_version"].value == "2"
        history = {
            p: [r.asset_materialization.metadata["model_version"].value
                for r in instance.fetch_materializations(dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey("model_dag_model"), asset_partitions=[p]),
                    limit=10).records]
            for p in ("1.0.0", "1.1.0")}
        assert history == {"1.0.0": ["1"], "1.1.0": ["2"]}
