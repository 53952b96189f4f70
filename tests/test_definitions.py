"""The whole asset graph's shape: a change to it is a visible, reviewed diff."""

from __future__ import annotations

import dagster as dg

from robolake_assets.definitions import defs


def _graph() -> dict:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    shape = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets_def = node.assets_def
        partitions = node.partitions_def
        shape[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "partitions": type(partitions).__name__ if partitions else None,
            "dimensions": sorted(d.name for d in partitions.partitions_defs)
            if isinstance(partitions, dg.MultiPartitionsDefinition) else None,
            "checks": sorted(c.name for c in assets_def.check_keys if c.asset_key == key),
            "pool": assets_def.node_def.pool if hasattr(assets_def.node_def, "pool") else None,
            "automation": node.automation_condition.get_label()
            if node.automation_condition else None,
        }
    return shape


PARTITIONED = {"partitions": "MultiPartitionsDefinition", "dimensions": ["date", "robot_type"],
               "pool": "cpu_spot"}
UNPARTITIONED = {"partitions": None, "dimensions": None, "pool": "cpu_spot", "automation": None}
# models: one partition per registered version of their dataset
GPU = {**UNPARTITIONED, "group": "models", "pool": "gpu_standard", "checks": [],
       "partitions": "DynamicPartitionsDefinition"}
CLEANED = {**PARTITIONED, "group": "cleaned", "deps": ["raw_uploads"], "automation": "eager"}


def test_asset_graph_shape():
    assert _graph() == {
        "raw_uploads": {**PARTITIONED, "group": "raw", "deps": [], "automation": None,
                        "checks": ["quarantine_rate", "raw_files_present", "unique_uploads"]},
        "cleaned_imu": {**CLEANED, "checks": ["great_expectations"]},
        "cleaned_gps": {**CLEANED, "checks": ["great_expectations"]},
        "cleaned_lidar": {**CLEANED, "checks": ["great_expectations"]},
        "cleaned_camera_frames": {**CLEANED, "checks": ["great_expectations"]},
        "cleaned_aligned_frames": {**CLEANED, "checks": ["great_expectations"]},
        "cleaned_quality_reports": {**CLEANED, "checks": [
            "duplicate_rate", "latency", "max_gap", "null_rate", "outlier_rate"]},
        # the feature layer: partitioned like the cleaned layer, scored right after it
        "corner_case_scores": {**PARTITIONED, "group": "features", "automation": "eager",
                               "deps": ["cleaned_aligned_frames"], "checks": []},
        # one asset per spec in specs/ (ego_motion_demo.yaml reads IMU windows)
        "datasets/ego_motion_demo": {
            **UNPARTITIONED, "group": "datasets", "checks": ["every_split_has_samples"],
            "deps": ["cleaned_aligned_frames", "cleaned_imu", "cleaned_quality_reports",
                     "corner_case_scores"]},
        # one training and one evaluation asset per config in configs/training/
        "model_imu_gps_demo": {**GPU, "deps": ["datasets/ego_motion_demo"]},
        "evaluation_imu_gps_demo": {**GPU, "deps": ["model_imu_gps_demo"]},
        # spend per team and project (issue 14), hourly
        "ops/costs": {**UNPARTITIONED, "group": "ops", "deps": [], "checks": [],
                      "pool": "cpu_on_demand"},
    }


def test_jobs_and_sensors():
    repo = defs.get_repository_def()
    assert sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")) == [
        "build_datasets", "delta_maintenance", "ingest_through_cleaned",
        "ingest_through_features", "ingest_through_raw", "ops_costs_job", "train_imu_gps_demo"]
    assert sorted(s.name for s in repo.sensor_defs) == [
        "budget_sensor", "default_automation_condition_sensor", "failed_runs_sensor",
        "new_uploads_sensor", "run_costs_sensor"]
    assert sorted(s.name for s in repo.schedule_defs) == ["hourly_ops_costs",
                                                          "nightly_delta_maintenance"]
    # new uploads run through the cleaned layer; the automation sensor scores features after
    uploads = repo.get_sensor_def("new_uploads_sensor")
    assert [t.job_name for t in uploads.targets] == ["ingest_through_cleaned"]


def test_model_partitions_are_the_dataset_versions():
    graph = defs.get_repository_def().asset_graph
    for name in ("model_imu_gps_demo", "evaluation_imu_gps_demo"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.DynamicPartitionsDefinition)
        assert partitions.name == "dataset_versions_ego_motion_demo"
    assert graph.get(dg.AssetKey("corner_case_scores")).partitions_def == graph.get(
        dg.AssetKey("cleaned_aligned_frames")).partitions_def


def test_dagster_cli_validates_the_workspace(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((repo / "dagster.yaml").read_text())
    out = subprocess.run([str(Path(sys.executable).parent / "dagster"), "definitions", "validate",
                          "-w", "workspace.yaml"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All code locations passed validation" in out.stdout + out.stderr
