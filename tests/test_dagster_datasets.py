"""Datasets through Dagster: one asset per spec file, metadata, refusal as a run failure."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import yaml

from robolake.cleaned import clean_partition
from robolake.datasets.scenarios import CORNER_CASES
from robolake.raw import ingest_landing
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_partitions import partition_key

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-20"


def _spec(name: str, version: str = "1.0.0", **over) -> dict:
    spec = yaml.safe_load((REPO / "specs" / "ego_motion_demo.yaml").read_text())
    spec.update(name=name, version=version)
    spec["sources"]["dates"] = {"start": DAY, "end": DAY}
    # short recordings: the second after the last GPS fix (no extrapolation) is a visible share
    spec["quality_gates"] = {"min_samples": 10, "max_missing_rate": 0.1}
    spec.update(over)
    return spec


@pytest.fixture
def lake_with_cleaned(tmp_path: Path, monkeypatch):
    landing, lake_dir = tmp_path / "landing", tmp_path / "lake"
    simulate_fleet(landing, robots=4, date=DAY, minutes=0.5, seed=5)
    landing_store, lake = open_store(landing), open_store(lake_dir)
    ingest_landing(landing_store, lake)
    for robot_type in ("delivery", "warehouse_amr"):
        clean_partition(lake, DAY, robot_type)
    monkeypatch.setenv("ROBOLAKE_LANDING", str(landing))
    monkeypatch.setenv("ROBOLAKE_LAKE", str(lake_dir))
    return tmp_path, lake


def _definitions(specs: Path, monkeypatch):
    """The code location as it loads with ROBOLAKE_SPECS pointing at `specs`."""
    monkeypatch.setenv("ROBOLAKE_SPECS", str(specs))
    from robolake.settings import Settings
    from robolake_assets.definitions import build_definitions

    return build_definitions(Settings.from_env())


def test_specs_become_assets_and_build(lake_with_cleaned, monkeypatch):
    tmp_path, lake = lake_with_cleaned
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "a.yaml").write_text(yaml.safe_dump(_spec("imu_a")))
    (specs / "b.yml").write_text(yaml.safe_dump(_spec("imu_b", balancing={"by": "region"})))
    defs = _definitions(specs, monkeypatch)
    keys = {k.to_user_string() for k in defs.get_repository_def().asset_graph
            .get_all_asset_keys()}
    assert {"datasets/imu_a", "datasets/imu_b", "corner_case_scores"} <= keys

    job = defs.resolve_job_def("build_datasets")
    with dg.instance_for_test() as instance:
        # the feature layer first, one (date, robot type) partition at a time
        instance.add_dynamic_partitions("robot_type", ["delivery", "warehouse_amr"])
        features = defs.resolve_job_def("ingest_through_features")
        scored = {}
        for robot_type in ("delivery", "warehouse_amr"):
            run = features.execute_in_process(instance=instance,
                                              partition_key=partition_key(DAY, robot_type))
            assert run.success
            [mat] = run.asset_materializations_for_node("corner_case_scores")
            scored[robot_type] = mat.metadata["dagster/row_count"].value
        scores = read_table(lake, CORNER_CASES, columns=["robot_type"]).to_pylist()
        assert scored == {rt: sum(r["robot_type"] == rt for r in scores)
                          for rt in ("delivery", "warehouse_amr")}
        assert min(scored.values()) > 0

        result = job.execute_in_process(instance=instance)
        assert result.success
        mats = {m.asset_key.to_user_string(): m.materialization.metadata
                for m in result.get_asset_materialization_events()}
        manifest = json.loads(lake.read_bytes("datasets/imu_a/1.0.0/manifest.json"))
        meta = mats["datasets/imu_a"]
        assert meta["built_now"].value is True
        assert meta["spec_hash"].value == manifest["spec_hash"]
        assert meta["dagster/row_count"].value == sum(
            s["samples"] for s in manifest["splits"].values())
        assert meta["input_delta_versions"].value == manifest["inputs"]
        assert "| train |" in meta["samples"].value
        # column lineage: the IMU windows back to the cleaned IMU columns
        imu_deps = meta["dagster/column_lineage"].value.deps_by_column["imu"]
        assert ("cleaned_imu", "ax") in {(d.asset_key.to_user_string(), d.column_name)
                                         for d in imu_deps}
        # the registered version is a partition of the models trained on it
        assert instance.get_dynamic_partitions("dataset_versions_imu_a") == ["1.0.0"]
        checks = {(e.asset_key.to_user_string(), e.check_name): e.passed
                  for e in result.get_asset_check_evaluations()}
        assert checks[("datasets/imu_a", "every_split_has_samples")] is True

        # a second run keeps the versions; a changed spec under the same version fails
        again = job.execute_in_process(instance=instance)
        assert again.success
        assert {m.asset_key.to_user_string(): m.materialization.metadata["built_now"].value
                for m in again.get_asset_materialization_events()
                if m.asset_key.path[0] == "datasets"} == {"datasets/imu_a": False,
                                                          "datasets/imu_b": False}
        (specs / "a.yaml").write_text(yaml.safe_dump(_spec("imu_a", description="new")))
        refused = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not refused.success
        failures = [e.step_failure_data.error.message for e in refused.all_events
                    if e.is_step_failure]
        assert len(failures) == 1
        assert "imu_a version 1.0.0 already exists" in failures[0]
        assert "bump `version`" in failures[0]


def test_a_bad_spec_stops_the_code_location_with_its_error(tmp_path: Path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    bad = _spec("bad")
    bad["output"]["splits"] = {"train": 0.8, "val": 0.1, "test": 0.05}
    (specs / "bad.yaml").write_text(yaml.safe_dump(bad))
    from robolake.datasets.spec import SpecError

    with pytest.raises(SpecError, match=r"bad\.yaml: output\.splits: train \+ val \+ test "
                                        r"must sum to 1"):
        _definitions(specs, monkeypatch)


def test_dataset_on_an_s3_lake(tmp_path: Path, s3_endpoint, monkeypatch):
    """Shards, manifest, cache and registry through the S3 protocol; the loader reads back
    exactly what was written."""
    import boto3

    from robolake.datasets.build import build_dataset, list_versions
    from robolake.datasets.loader import load
    from robolake.datasets.shards import iter_shard
    from robolake.datasets.spec import parse_spec

    for k, v in s3_endpoint.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ROBOLAKE_CACHE", str(tmp_path / "cache"))
    boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                 region_name="us-east-1").create_bucket(Bucket="lake-ds")
    simulate_fleet(tmp_path / "landing", robots=3, date=DAY, minutes=0.3, seed=9)
    lake = open_store("s3://lake-ds/robolake")
    ingest_landing(open_store(tmp_path / "landing"), lake)
    for robot_type in ("delivery", "warehouse_amr"):
        clean_partition(lake, DAY, robot_type)
    result = build_dataset(lake, parse_spec(_spec("s3_demo")))
    assert result.created and result.cache_misses == 3
    assert list_versions(lake, "s3_demo")["version"].to_list() == ["1.0.0"]
    for split, info in result.manifest["splits"].items():
        keys = [s["key"] for s in load("s3_demo", "1.0.0", split, lake=lake)]
        assert len(keys) == info["samples"]
        cached = [tmp_path / "cache" / "s3" / "lake-ds" / "robolake" / s["key"]
                  for s in info["shards"]]
        assert keys == [s["__key__"] for p in cached for s in iter_shard(p)]
    # the second build is served from the S3 cache and changes nothing
    assert not build_dataset(lake, parse_spec(_spec("s3_demo"))).created


def test_cli_lists_and_compares_versions(lake_with_cleaned, capsys):
    from robolake.datasets.build import build_dataset
    from robolake.datasets.spec import parse_spec
    from robolake_assets.cli import main

    tmp_path, lake = lake_with_cleaned
    a = build_dataset(lake, parse_spec(_spec("cli_ds", "1.0.0")))
    b = build_dataset(lake, parse_spec(_spec("cli_ds", "1.1.0", balancing={"by": "region"})))
    lake_dir = str(tmp_path / "lake")
    assert main(["datasets", "list", "cli_ds", "--lake", lake_dir]) == 0
    listing = capsys.readouterr().out
    assert "1.0.0" in listing and "1.1.0" in listing
    assert str(a.samples["train"]) in listing and str(b.samples["train"]) in listing
    assert main(["datasets", "compare", "cli_ds", "1.0.0", "1.1.0", "--lake", lake_dir]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "train.samples" in line)
    assert f"{a.samples['train']}.0" in row and f"{b.samples['train']}.0" in row
    assert main(["datasets", "compare", "cli_ds", "1.0.0", "9.9.9", "--lake", lake_dir]) == 2
    assert "has no version 9.9.9" in capsys.readouterr().err
