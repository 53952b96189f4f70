"""Training configs and the architecture registry: precise errors, shipped configs valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from robolake.models.architectures import (
    ARCHITECTURES,
    ArchitectureError,
    build_model,
    io_for_dataset,
)
from robolake.models.config import ConfigError, load_config, parse_config
from robolake.models.synthetic import synthetic_spec

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "training" / "imu_gps_demo.yaml"


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_shipped_configs_are_valid():
    paths = sorted((REPO / "configs" / "training").rglob("*.yaml"))
    assert DEMO in paths and len(paths) >= 2
    for path in paths:
        config = load_config(path)
        assert config.model.architecture in ARCHITECTURES
    demo = load_config(DEMO)
    assert (demo.dataset.name, demo.dataset.version) == ("ego_motion_demo", "1.0.0")
    assert demo.evaluation.margin == 0.02 and demo.evaluation.max_corner_case_failure_rate == 0.05
    assert demo.config_hash == load_config(DEMO).config_hash
    changed = _demo()
    changed["training"]["seed"] = 8
    assert parse_config(changed).config_hash != demo.config_hash
    params = demo.flat_params()
    assert params["training.optimizer.lr"] == "0.003" and params["dataset.version"] == "1.0.0"


def _error(mutate) -> str:
    data = _demo()
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "configs/training/x.yaml")
    return str(exc.value)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["training"]["optimizer"].update(lr=0),
     "configs/training/x.yaml: training.optimizer.lr: Input should be greater than 0 (got 0)"),
    (lambda d: d["training"].update(batchsize=3),
     "configs/training/x.yaml: training.batchsize: unknown field (check the spelling)"),
    (lambda d: d.pop("dataset"), "configs/training/x.yaml: dataset: required field is missing"),
    (lambda d: d["model"].update(architecture="resnet9000"),
     "configs/training/x.yaml: model.architecture: unknown architecture 'resnet9000'; "
     "expected one of imu_gps_convnet, lidar_bev_cnn, camera_cnn"),
    (lambda d: d["model"]["params"].update(hiden=3),
     "configs/training/x.yaml: model.params.hiden: unknown field (check the spelling)"),
    (lambda d: d["model"]["params"].update(hidden=2),
     "configs/training/x.yaml: model.params.hidden: Input should be greater than or equal to 4 "
     "(got 2)"),
    (lambda d: d["dataset"].update(version="latest"),
     "configs/training/x.yaml: dataset.version: expected a semantic version MAJOR.MINOR.PATCH, "
     "e.g. 1.0.0"),
    (lambda d: d["training"].update(mixed_precision="fp8"),
     "configs/training/x.yaml: training.mixed_precision: Input should be 'auto', 'off', 'bf16' "
     "or 'fp16' (got 'fp8')"),
    (lambda d: d.update(name="My Model"),
     "configs/training/x.yaml: name: expected lowercase letters, digits, '_' or '-' (it names a "
     "registered model, a folder and an asset)"),
])
def test_errors_name_the_file_and_field(mutate, message):
    assert _error(mutate) == message


def test_every_problem_is_reported_and_files_are_named(tmp_path):
    data = _demo()
    data["training"]["epochs"] = 0
    data["checkpoint"]["keep"] = 0
    with pytest.raises(ConfigError) as exc:
        parse_config(data, "c.yaml")
    assert str(exc.value).splitlines() == [
        "c.yaml: training.epochs: Input should be greater than 0 (got 0)",
        "c.yaml: checkpoint.keep: Input should be greater than or equal to 1 (got 0)"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"missing.yaml: no such training config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: expected a mapping"):
        parse_config(["a"], "x.yaml")


def test_architectures_fit_the_dataset_and_its_label_kind():
    spec = synthetic_spec("d", "1.0.0", "scenario", features=("imu", "gps", "lidar"))
    spec = spec.model_dump(mode="json")
    imu = io_for_dataset(ARCHITECTURES["imu_gps_convnet"], spec)
    assert (imu.task, imu.inputs, imu.outputs) == ("scenario", ("imu", "gps"), 6)
    assert imu.shapes == {"imu": (20, 6), "gps": (10, 3)}
    lidar = io_for_dataset(ARCHITECTURES["lidar_bev_cnn"], spec)
    assert lidar.inputs == ("lidar",) and lidar.shapes["lidar"] == (1, 16, 16)
    for arch, io in (("imu_gps_convnet", imu), ("lidar_bev_cnn", lidar)):
        model = build_model(arch, {}, io)
        assert model(*io.example_inputs(batch=3)).shape == (3, 6)

    ego = synthetic_spec("d", "1.0.0", "ego_motion", features=("imu",)).model_dump(mode="json")
    ego_io = io_for_dataset(ARCHITECTURES["imu_gps_convnet"], ego)
    assert (ego_io.task, ego_io.inputs, ego_io.outputs) == ("ego_motion", ("imu",), 2)
    assert build_model("imu_gps_convnet", {}, ego_io)(*ego_io.example_inputs(4)).shape == (4, 2)

    camera = {**ego, "features": {**ego["features"], "camera": {
        "resize": [64, 48], "normalize": True,
        "augment": {"random_crop": [32, 24], "hflip_probability": 0.0}}}}
    cam_io = io_for_dataset(ARCHITECTURES["camera_cnn"], camera)
    assert cam_io.shapes["camera"] == (3, 24, 32)  # crop is (width, height)
    out = build_model("camera_cnn", {"channels": 4}, cam_io)(torch.zeros(2, 3, 24, 32))
    assert out.shape == (2, 2)

    with pytest.raises(ArchitectureError, match="lidar_bev_cnn needs lidar features but dataset "
                                                "d has only imu"):
        io_for_dataset(ARCHITECTURES["lidar_bev_cnn"], {**ego, "name": "d"})
