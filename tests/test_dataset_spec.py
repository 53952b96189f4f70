"""Dataset spec validation: precise errors that name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robolake.datasets.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "specs" / "ego_motion_demo.yaml"


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_shipped_spec_is_valid_and_hash_is_stable():
    spec = load_spec(DEMO)
    assert (spec.name, spec.version) == ("ego_motion_demo", "1.0.0")
    assert spec.output.splits.train == 0.8
    assert spec.features.imu_window.size == 20 and spec.features.lidar is None
    assert spec.spec_hash == load_spec(DEMO).spec_hash
    changed = _demo()
    changed["features"]["imu_window"]["size"] = 40
    assert parse_spec(changed).spec_hash != spec.spec_hash


def _error(mutate) -> str:
    data = _demo()
    mutate(data)
    with pytest.raises(SpecError) as exc:
        parse_spec(data, "specs/x.yaml")
    return str(exc.value)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["output"]["splits"].update(test=0.0),
     "specs/x.yaml: output.splits: train + val + test must sum to 1 (got 0.9)"),
    (lambda d: d.update(version="v1"),
     "specs/x.yaml: version: expected a semantic version MAJOR.MINOR.PATCH, e.g. 1.0.0"),
    (lambda d: d.update(name="Ego Motion"),
     "specs/x.yaml: name: expected lowercase letters, digits, '_' or '-' (it names a folder "
     "and an asset)"),
    (lambda d: d["features"]["imu_window"].update(strde=5),
     "specs/x.yaml: features.imu_window.strde: unknown field (check the spelling)"),
    (lambda d: d.pop("labels"), "specs/x.yaml: labels: required field is missing"),
    (lambda d: d["sources"].update(tables=["cleaned/imus"]),
     "specs/x.yaml: sources.tables: unknown table 'cleaned/imus'; expected one of "
     "cleaned/aligned_frames, cleaned/imu, cleaned/gps, cleaned/lidar, cleaned/camera_frames"),
    (lambda d: d["sources"].update(dates={"start": "2026-02-01", "end": "2026-01-01"}),
     "specs/x.yaml: sources.dates: end 2026-01-01 is before start 2026-02-01"),
    (lambda d: d["balancing"]["weights"].update(delivery=0),
     "specs/x.yaml: balancing.weights: weight of group 'delivery' must be > 0 (got 0.0)"),
    (lambda d: d.update(features={}),
     "specs/x.yaml: features: at least one of imu_window, gps_trajectory, lidar, camera"),
    (lambda d: d["labels"].update(kind="steering"),
     "specs/x.yaml: labels.kind: Input should be 'ego_motion' or 'scenario' (got 'steering')"),
    (lambda d: d["features"].update(camera={"resize": [64, 48],
                                            "augment": {"random_crop": [80, 40]}}),
     "specs/x.yaml: features.camera: augment.random_crop [80, 40] is larger than resize "
     "[64, 48]"),
])
def test_errors_name_the_field_and_what_was_expected(mutate, message):
    assert _error(mutate) == message


def test_every_problem_is_reported_at_once():
    def two_problems(d):
        d["output"]["shard_size_mb"] = -1
        d["quality_gates"]["min_samples"] = 0
    lines = _error(two_problems).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "output.shard_size_mb", "quality_gates.min_samples"]


def test_bad_yaml_and_wrong_shape(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML at line 2"):
        load_spec(bad)
    with pytest.raises(SpecError, match=r"<spec>: expected a mapping .* \(got list\)"):
        parse_spec([1, 2])
