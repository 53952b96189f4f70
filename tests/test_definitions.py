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
            # every check of the asset, also those defined apart (the freshness SLA)
            "checks": sorted(c.name for c in graph.asset_check_keys if c.asset_key == key),
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
CLEANED = {**PARTITIONED, "group": "cleaned", "deps": ["raw_uploads"],
           "automation": "eager (any partition)"}


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
            "duplicate_rate", "freshness", "latency", "max_gap", "null_rate", "outlier_rate"]},
        # the feature layer: partitioned like the cleaned layer, scored right after it
        "corner_case_scores": {**PARTITIONED, "group": "features",
                               "automation": "eager (any partition)",
                               "deps": ["cleaned_aligned_frames"], "checks": []},
        # corner-case frames as Label Studio tasks, queued once each after new scores
        "annotation_queue": {**UNPARTITIONED, "group": "annotations", "automation": "eager",
                             "deps": ["corner_case_scores"], "checks": []},
        # one asset per notebook in notebooks/ (run with papermill; scheduled from YAML)
        "notebook_explore_day": {**UNPARTITIONED, "group": "notebooks", "checks": [],
                                 "deps": ["cleaned_aligned_frames", "cleaned_quality_reports"]},
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
        "build_datasets", "cleaned_freshness", "delta_maintenance", "ingest_through_cleaned",
        "ingest_through_features", "ingest_through_raw", "instance_backup",
        "notebook_explore_day_job", "ops_costs_job", "storage_tiering", "train_imu_gps_demo"]
    assert sorted(s.name for s in repo.sensor_defs) == [
        "budget_sensor", "default_automation_condition_sensor", "failed_runs_sensor",
        "new_uploads_sensor", "notify_failed_checks", "notify_failed_runs", "run_costs_sensor"]
    assert sorted(s.name for s in repo.schedule_defs) == [
        "cleaned_freshness_schedule", "hourly_instance_backup", "hourly_ops_costs",
        "nightly_delta_maintenance", "nightly_storage_tiering", "notebook_explore_day_schedule"]
    # a laptop's SQLite instance has nothing to pg_dump: the backup schedule starts stopped
    backup_schedule = repo.get_schedule_def("hourly_instance_backup")
    assert backup_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    # the freshness SLA runs on its schedule, not inside every partition run
    assert not any(c.name == "freshness" for c in repo.get_job("ingest_through_cleaned")
                   .asset_layer.asset_graph.asset_check_keys)
    # new uploads run through the cleaned layer; the automation sensor scores features after
    uploads = repo.get_sensor_def("new_uploads_sensor")
    assert [t.job_name for t in uploads.targets] == ["ingest_through_cleaned"]
    # automation runs from the first `make ui` on: a raw partition launched from the UI or
    # `dagster job launch -j ingest_through_raw` is cleaned without anyone turning it on
    for name in ("default_automation_condition_sensor", "new_uploads_sensor"):
        assert repo.get_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING, name


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
