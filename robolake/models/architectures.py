"""The model registry: small networks that fit robot sensor data.

Each architecture declares the batch fields it reads (required and optional:
an optional one is used when the dataset has it), the tasks it can learn, and
its parameters (a strict pydantic model, validated with the training config).
The task comes from the dataset's label kind:

- `scenario`: classify the frame into SCENARIO_CLASSES (corner-case classifier),
  logits [B, 6], cross-entropy;
- `ego_motion`: regress speed (m/s) and yaw rate (rad/s), [B, 2], MSE.

A built model carries its `io` (task, inputs and their per-sample shapes), so a
model loaded back from MLflow knows which batch fields to feed it, in order.
`forward` takes those tensors positionally (also the ONNX input order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from robolake.datasets.scenarios import SCENARIO_CLASSES

TASKS = {
    "scenario": {"outputs": len(SCENARIO_CLASSES), "labels": list(SCENARIO_CLASSES)},
    "ego_motion": {"outputs": 2, "labels": ["speed_mps", "yaw_rate_radps"]},
}
# dataset spec feature -> batch field
FEATURE_FIELDS = {"imu_window": "imu", "gps_trajectory": "gps", "lidar": "lidar",
                  "camera": "camera"}


class ArchitectureError(ValueError):
    """An architecture that cannot be built for a dataset (missing features, wrong task)."""


@dataclass(frozen=True)
class ModelIO:
    task: str  # "scenario" or "ego_motion"
    inputs: tuple[str, ...]  # batch fields, in forward() order
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per sample
    outputs: int = 2

    def to_dict(self) -> dict:
        return {**asdict(self), "inputs": list(self.inputs),
                "shapes": {k: list(v) for k, v in self.shapes.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> ModelIO:
        return cls(data["task"], tuple(data["inputs"]),
                   {k: tuple(v) for k, v in data["shapes"].items()}, data["outputs"])

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(torch.randn((batch, *self.shapes[name]), generator=gen)
                     for name in self.inputs)


def io_for_dataset(arch: Architecture, spec: dict) -> ModelIO:
    """The task, inputs and shapes an architecture gets from a dataset spec (as in a manifest)."""
    kind = spec["labels"]["kind"]
    if kind not in arch.tasks:
        raise ArchitectureError(f"architecture {arch.name} cannot learn {kind!r} labels; it "
                                f"supports {', '.join(arch.tasks)}")
    features = {FEATURE_FIELDS[k]: v for k, v in spec["features"].items()
                if k in FEATURE_FIELDS and v}
    missing = [f for f in arch.required if f not in features]
    if missing:
        raise ArchitectureError(
            f"architecture {arch.name} needs {', '.join(missing)} features but dataset "
            f"{spec.get('name', '?')} has only {', '.join(features) or 'none'}")
    inputs = tuple(f for f in (*arch.required, *arch.optional) if f in features)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in inputs:
        feat = features[name]
        if name == "imu":
            shapes[name] = (int(feat["size"]), 6)
        elif name == "gps":
            shapes[name] = (int(feat.get("history") or 10), 3)
        elif name == "lidar":
            cells = int(feat.get("bev_cells") or 32)
            shapes[name] = (1, cells, cells)
        elif name == "camera":
            crop = (feat.get("augment") or {}).get("random_crop")
            width, height = crop or feat["resize"]
            shapes[name] = (3, int(height), int(width))
    return ModelIO(kind, inputs, shapes, TASKS[kind]["outputs"])


# --------------------------------------------------------------------------- networks

def _head(features: int, hidden: int, outputs: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(features, hidden), nn.ReLU(),
                         nn.Linear(hidden, outputs))


class ImuGpsConvNet(nn.Module):
    """1-D convolutions over the IMU window (mean- and max-pooled over time), an MLP
    over the GPS trajectory when the dataset has one, and a small head."""

    def __init__(self, io: ModelIO, hidden: int = 32, kernel: int = 5, dropout: float = 0.1,
                 gps_scale_m: float = 1.0):
        super().__init__()
        self.io = io
        self.imu = nn.Sequential(
            nn.Conv1d(6, hidden, kernel, padding=kernel // 2), nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU())
        width = 2 * hidden + 6  # avg- and max-pooled conv features, plus the raw window mean
        self.use_gps = "gps" in io.inputs
        self.gps_scale = gps_scale_m
        if self.use_gps:
            history = io.shapes["gps"][0]
            self.gps = nn.Sequential(nn.Linear(history * 3, hidden), nn.ReLU())
            width += hidden
        self.head = _head(width, hidden, io.outputs, dropout)

    def forward(self, imu: torch.Tensor, gps: torch.Tensor | None = None) -> torch.Tensor:
        x = imu.transpose(1, 2)  # [B, 6, T]
        h = self.imu(x)
        parts = [h.mean(dim=2), h.amax(dim=2), x.mean(dim=2)]
        if self.use_gps:
            parts.append(self.gps(gps.flatten(1) / self.gps_scale))
        return self.head(torch.cat(parts, dim=1))


class LidarBevCnn(nn.Module):
    """A small CNN over the bird's-eye LiDAR occupancy grid."""

    def __init__(self, io: ModelIO, channels: int = 16, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.io = io
        cells = io.shapes["lidar"][-1]
        self.density = float(cells * cells)  # occupancy shares sum to 1; scale to ~1 per cell
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = _head(2 * c, hidden, io.outputs, dropout)

    def forward(self, lidar: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(lidar * self.density).flatten(1))


class CameraCnn(nn.Module):
    """A small strided CNN over the camera frame."""

    def __init__(self, io: ModelIO, channels: int = 16, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.io = io
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = _head(4 * c, hidden, io.outputs, dropout)

    def forward(self, camera: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(camera).flatten(1))


# --------------------------------------------------------------------------- registry

class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImuGpsParams(_Params):
    hidden: int = Field(32, ge=4, le=2048)
    kernel: int = Field(5, ge=1, le=63)
    dropout: float = Field(0.1, ge=0, lt=1)
    gps_scale_m: float = Field(1.0, gt=0)  # metres per unit of GPS input


class CnnParams(_Params):
    channels: int = Field(16, ge=1, le=512)
    hidden: int = Field(64, ge=4, le=4096)
    dropout: float = Field(0.1, ge=0, lt=1)


@dataclass(frozen=True)
class Architecture:
    name: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    tasks: tuple[str, ...]
    params: type[_Params]
    module: Callable[..., nn.Module]


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("imu_gps_convnet",
                 "IMU window (+ GPS trajectory) -> scenario / corner-case class or ego motion",
                 ("imu",), ("gps",), ("scenario", "ego_motion"), ImuGpsParams, ImuGpsConvNet),
    Architecture("lidar_bev_cnn", "LiDAR bird's-eye occupancy grid -> scenario or ego motion",
                 ("lidar",), (), ("scenario", "ego_motion"), CnnParams, LidarBevCnn),
    Architecture("camera_cnn", "camera frame -> scenario or ego motion",
                 ("camera",), (), ("scenario", "ego_motion"), CnnParams, CameraCnn),
)}


def build_model(architecture: str, params: dict, io: ModelIO) -> nn.Module:
    """A freshly initialised network (seed torch first for reproducible weights)."""
    arch = ARCHITECTURES[architecture]
    return arch.module(io, **arch.params.model_validate(params).model_dump())
