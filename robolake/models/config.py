"""Training configs: the YAML that says what to train on, which model, and how.

Validated like dataset specs (robolake.datasets.spec): an error names the file
and the field and says what was expected, e.g.
`configs/training/x.yaml: training.optimizer.lr: Input should be greater than 0 (got 0)`,
and unknown fields are errors. The config hash (canonical JSON of the
validated config) identifies a training run for checkpoints and lineage.

The task (scenario classification or ego-motion regression) is not written
here: it is the dataset's label kind, read from the version's manifest, so the
same config trains whatever the dataset is labelled with (if the architecture
supports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_serializer

from robolake.models.architectures import ARCHITECTURES
from robolake.yaml_config import SemVer, Strict, error_lines, name_type, read_yaml

ModelName = name_type("a registered model, a folder and an asset")


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the file and the fields."""


class SplitNames(Strict):
    train: str = "train"
    val: str = "val"
    test: str = "test"


class DatasetRef(Strict):
    name: str
    version: SemVer
    splits: SplitNames = SplitNames()


class ModelSection(Strict):
    architecture: str
    # the architecture's own options; checked against its parameter model after parsing
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {name!r}; expected one of "
                             f"{', '.join(ARCHITECTURES)}")
        return name


class Optimizer(Strict):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only


class LrSchedule(Strict):
    """Per-step learning-rate factor: linear warmup, then constant, cosine decay to
    `min_factor`, or a `gamma` decay every `step_size` steps."""

    name: Literal["constant", "cosine", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_factor: float = Field(0.05, ge=0, le=1)  # cosine
    step_size: int = Field(1000, gt=0)  # step
    gamma: float = Field(0.5, gt=0, le=1)  # step


class Hyperparameters(Strict):
    seed: int = 0
    epochs: int = Field(gt=0, le=10_000)
    max_steps: int | None = Field(None, gt=0)  # stop earlier than `epochs` (smoke runs, demos)
    batch_size: int = Field(gt=0, le=65_536)  # per process
    optimizer: Optimizer = Optimizer()
    lr_schedule: LrSchedule = LrSchedule()
    grad_clip_norm: float | None = Field(1.0, gt=0)
    # only on CUDA; CPU training is always float32 (and deterministic for a seed)
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = "auto"
    num_workers: int = Field(0, ge=0, le=64)  # data-loader worker processes per rank
    # intra-op threads per process on CPU (None: torch's default, all cores). Small models
    # train fastest on 1, and results are reproducible for a given thread count.
    cpu_threads: int | None = Field(None, ge=1, le=1024)
    log_every_steps: int = Field(10, gt=0)


class Checkpointing(Strict):
    """Checkpoints go to the lake (models/<name>/checkpoints/<run key>/) every
    `every_steps` steps or `every_minutes` minutes, whichever comes first, and at
    the end of each epoch; the newest `keep` are kept."""

    every_steps: int | None = Field(200, gt=0)
    every_minutes: float | None = Field(10.0, gt=0)
    keep: int = Field(3, ge=1)


class EarlyStopping(Strict):
    enabled: bool = True
    metric: Literal["val_loss", "val_main"] = "val_loss"  # val_main: the task's main metric
    patience: int = Field(3, ge=1)  # epochs without improvement
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = True  # the registered weights are the best epoch's


class Distributed(Strict):
    """`nproc_per_node` > 1 launches `torchrun` with that many processes (DDP). A run
    started by torchrun (RANK/WORLD_SIZE set) uses its world size whatever this says.

    `nnodes` > 1 is multi-node DDP: on Kubernetes the training asset submits a PyTorchJob
    of `nnodes` pods with `nproc_per_node` GPUs each, gang-admitted by Kueue
    (robolake_resources.training_jobs); run anywhere else, the same world size
    (`world_size`) runs on this one node, so checkpoints and the run key are the same."""

    nnodes: int = Field(1, ge=1, le=256)
    nproc_per_node: int = Field(1, ge=1, le=64)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, else gloo

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # one node is left out of the dump, so the config hash of every config written
        # before `nnodes` existed stays the same (and its checkpoints and versions reused)
        data = handler(self)
        if data.get("nnodes") == 1:
            del data["nnodes"]
        return data


class RegressionTolerance(Strict):
    """An ego-motion prediction fails when either error is above its tolerance."""

    speed_mps: float = Field(0.5, gt=0)
    yaw_rate_radps: float = Field(0.2, gt=0)


class Evaluation(Strict):
    """How the test split is scored and when a new model replaces production."""

    # auto: macro_f1 for scenario classifiers, mae for ego-motion regressors
    main_metric: Literal["auto", "accuracy", "macro_f1", "mae", "rmse"] = "auto"
    margin: float = Field(0.02, ge=0, le=10)  # relative improvement over production needed
    max_corner_case_failure_rate: float = Field(0.05, ge=0, le=1)
    corner_case_threshold: float = Field(0.5, ge=0, le=1)  # corner_case_score at or above
    require_corner_cases: bool = True  # no corner case in the test split: refuse promotion
    regression_tolerance: RegressionTolerance = RegressionTolerance()
    batch_size: int = Field(256, gt=0)
    onnx_atol: float = Field(1e-4, gt=0)
    onnx_rtol: float = Field(1e-3, ge=0)


class TrainingConfig(Strict):
    name: ModelName  # also the registered model's name in MLflow
    description: str = ""
    dataset: DatasetRef
    model: ModelSection
    training: Hyperparameters
    checkpoint: Checkpointing = Checkpointing()
    early_stopping: EarlyStopping = EarlyStopping()
    distributed: Distributed = Distributed()
    evaluation: Evaluation = Evaluation()

    @property
    def config_hash(self) -> str:
        return self.canonical_hash()

    def for_dataset_version(self, version: str) -> TrainingConfig:
        """This config trained on another registered version of its dataset (a partition
        of the model asset); the version is validated like the file's."""
        data = self.model_dump(mode="json")
        data["dataset"]["version"] = version
        return parse_config(data, f"{self.name} for dataset version {version!r}")

    def flat_params(self) -> dict[str, str]:
        """Every setting as `section.field` -> text (MLflow params)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)

        walk("", self.model_dump(mode="json", exclude={"description"}))
        return out


def parse_config(data: object, source: str = "<config>") -> TrainingConfig:
    """Validate a config from parsed YAML; ConfigError lists every problem, one per line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with name, dataset, model and training "
                          f"(got {type(data).__name__})")
    try:
        config = TrainingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(error_lines(source, exc)) from None
    arch = ARCHITECTURES[config.model.architecture]
    try:
        arch.params.model_validate(config.model.params)
    except ValidationError as exc:
        raise ConfigError(error_lines(source, exc, ("model", "params"))) from None
    return config


def load_config(path: str | Path) -> TrainingConfig:
    return parse_config(read_yaml(Path(path), ConfigError, "training config"), str(path))
