"""Dataset specs: the YAML a user writes to describe a training set, validated.

Errors name the file and the field and say what was expected, e.g.
`specs/ego.yaml: output.splits: train + val + test must sum to 1 (got 0.9)`.
Unknown fields are errors too, so a misspelt option never silently does nothing.
The spec's hash (canonical JSON of the validated spec) identifies what a
dataset version was built from.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from robolake.yaml_config import SemVer, Strict, error_lines, name_type, read_yaml

DatasetName = name_type("a folder and an asset")
SOURCE_TABLES = ("cleaned/aligned_frames", "cleaned/imu", "cleaned/gps", "cleaned/lidar",
                 "cleaned/camera_frames")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file and the fields."""


class DateRange(Strict):
    start: date
    end: date | None = None  # open-ended: every later day (new data then needs a new version)

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class QualityFilter(Strict):
    max_null_rate: float = Field(0.05, ge=0, le=1)
    include_flagged: bool = True


class Filters(Strict):
    robot_type: list[str] | None = None
    region: list[str] | None = None
    quality: QualityFilter = QualityFilter()
    min_corner_case_score: float = Field(0.0, ge=0, le=1)


class Sources(Strict):
    tables: list[str] = Field(default_factory=lambda: ["cleaned/aligned_frames"], min_length=1)
    dates: DateRange
    filters: Filters = Filters()

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, tables: list[str]) -> list[str]:
        unknown = [t for t in tables if t not in SOURCE_TABLES]
        if unknown:
            raise ValueError(f"unknown table {unknown[0]!r}; expected one of "
                             f"{', '.join(SOURCE_TABLES)}")
        return tables


class Balancing(Strict):
    by: Literal["robot_type", "region", "scenario"] = "robot_type"
    weights: dict[str, float] = Field(default_factory=dict)
    corner_case_multiplier: float = Field(1.0, ge=1)

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in weights.items() if v <= 0}
        if bad:
            group, value = next(iter(bad.items()))
            raise ValueError(f"weight of group {group!r} must be > 0 (got {value})")
        return weights


class ImuWindow(Strict):
    """The last `size` IMU samples up to each sampled frame; one sample every `stride`
    LiDAR frames of a recording."""

    size: int = Field(gt=0, le=10_000)
    stride: int = Field(gt=0)
    normalize: Literal["zscore", "none"] = "zscore"  # statistics from the train split only


class GpsTrajectory(Strict):
    """Positions of the last `history` frames in metres (WGS84 -> east/north/up) relative
    to the sampled frame; `interpolate` fills frames between fixes inside a recording."""

    frame: Literal["local_enu"] = "local_enu"
    history: int = Field(10, gt=0, le=1000)
    interpolate: bool = True


class LidarAugment(Strict):
    random_rotation_deg: float = Field(0.0, ge=0, le=180)


class LidarFeature(Strict):
    """Points within `range_crop_m`, one per `voxel_size_m` voxel; the loader turns them into
    a `bev_cells` x `bev_cells` bird's-eye occupancy grid."""

    voxel_size_m: float = Field(gt=0)
    range_crop_m: float = Field(gt=0, le=200)
    bev_cells: int = Field(32, ge=4, le=512)
    augment: LidarAugment = LidarAugment()


class CameraAugment(Strict):
    random_crop: tuple[int, int] | None = None
    hflip_probability: float = Field(0.0, ge=0, le=1)


class CameraFeature(Strict):
    resize: tuple[int, int]
    normalize: bool = True
    augment: CameraAugment = CameraAugment()

    @model_validator(mode="after")
    def _crop_fits(self) -> CameraFeature:
        crop = self.augment.random_crop
        if crop and (crop[0] > self.resize[0] or crop[1] > self.resize[1]):
            raise ValueError(f"augment.random_crop {list(crop)} is larger than resize "
                             f"{list(self.resize)}")
        return self


class Features(Strict):
    imu_window: ImuWindow | None = None
    gps_trajectory: GpsTrajectory | None = None
    lidar: LidarFeature | None = None
    camera: CameraFeature | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Features:
        if not any((self.imu_window, self.gps_trajectory, self.lidar, self.camera)):
            raise ValueError("at least one of imu_window, gps_trajectory, lidar, camera")
        return self


class Labels(Strict):
    kind: Literal["ego_motion", "scenario"]
    # computed: every sampled frame, labelled by the rules (scenario) or the motion
    # (ego_motion); annotations: only frames people labelled in the annotation queue
    # (cleaned/annotations, robolake/annotations.py), with their label
    source: Literal["computed", "annotations"] = "computed"

    @model_validator(mode="after")
    def _annotations_are_scenarios(self) -> Labels:
        if self.source == "annotations" and self.kind != "scenario":
            raise ValueError("source: annotations labels scenarios: set kind: scenario")
        return self


class Splits(Strict):
    train: float = Field(ge=0, le=1)
    val: float = Field(ge=0, le=1)
    test: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class Output(Strict):
    format: Literal["webdataset"] = "webdataset"
    shard_size_mb: float = Field(64.0, gt=0)
    splits: Splits


class QualityGates(Strict):
    min_samples: int = Field(1, ge=1)
    max_missing_rate: float = Field(0.05, ge=0, le=1)


class Approval(Strict):
    """Who approved reading restricted columns as recorded, when and why (see
    robolake/governance/privacy.py; recorded in ops/audit by each build)."""

    by: str = Field(min_length=1)
    when: date
    reason: str = Field(min_length=3)


class DatasetSpec(Strict):
    name: DatasetName
    version: SemVer
    description: str = ""
    sources: Sources
    balancing: Balancing = Balancing()
    features: Features
    labels: Labels
    output: Output
    quality_gates: QualityGates = QualityGates()
    # required when a feature or label reads a restricted column (robolake.governance.privacy)
    privacy: Literal["masked", "approved"] | None = None
    approval: Approval | None = None

    @property
    def spec_hash(self) -> str:
        # a spec without privacy fields hashes as it did before they existed
        unset = {k for k in ("privacy", "approval") if getattr(self, k) is None}
        return self.canonical_hash(exclude=unset)


def parse_spec(data: object, source: str = "<spec>") -> DatasetSpec:
    """Validate a spec from parsed YAML; SpecError lists every problem, one per line."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with name, version, sources, features, "
                        f"labels and output (got {type(data).__name__})")
    from robolake.governance.privacy import spec_problems

    try:
        spec = DatasetSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(error_lines(source, exc)) from None
    problems = spec_problems(spec)
    if problems:
        raise SpecError("\n".join(f"{source}: {p}" for p in problems))
    return spec


def load_spec(path: Path) -> DatasetSpec:
    return parse_spec(read_yaml(path, SpecError, "dataset spec"), str(path))
