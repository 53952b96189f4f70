"""Raw + cleaned through the Dagster job: metadata, quality checks and GX suites."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from robolake.settings import Settings
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_assets.definitions import build_definitions
from robolake_partitions import partition_key


def test_ingest_job_through_cleaned(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ROBOLAKE_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("ROBOLAKE_LAKE", str(tmp_path / "lake"))
    simulate_fleet(tmp_path / "landing", robots=3, date="2026-11-20", minutes=0.2, seed=3,
                   faults=["duplicate_messages:2", "black_frames:1"])
    # the code location as it loads in this environment (resources read ROBOLAKE_*)
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def("ingest_through_cleaned")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("robot_type", ["delivery", "warehouse_amr"])
        evaluations = {}
        for robot_type in ("delivery", "warehouse_amr"):
            result = job.execute_in_process(
                instance=instance, partition_key=partition_key("2026-11-20", robot_type))
            assert result.success
            evaluations[robot_type] = {
                (e.asset_key.to_user_string(), e.check_name): e.passed
                for e in result.get_asset_check_evaluations()}
            mats = {m.asset_key.to_user_string(): m for m in
                    result.get_asset_materialization_events()}
            assert set(mats) == {"raw_uploads", "cleaned_imu", "cleaned_gps", "cleaned_lidar",
                                 "cleaned_camera_frames", "cleaned_aligned_frames",
                                 "cleaned_quality_reports"}
            aligned = mats["cleaned_aligned_frames"].materialization.metadata
            assert aligned["dagster/row_count"].value == 120 * (2 if robot_type == "delivery"
                                                                 else 1)
            report = mats["cleaned_quality_reports"].materialization.metadata
            assert report["uploads"].value == (2 if robot_type == "delivery" else 1)
            assert "removed_imu_duplicates" in report and "null_rate" in report
            # column lineage (robolake/governance/catalog.py): aligned GPS back to cleaned_gps
            lineage = aligned["dagster/column_lineage"].value.deps_by_column
            assert [(d.asset_key.to_user_string(), d.column_name)
                    for d in lineage["gps_lat"]] == [("cleaned_gps", "lat"),
                                                     ("cleaned_gps", "ts_ns")]
            # every Delta commit of the run is in the audit log, by the run, with its files
            trail = read_table(open_store(tmp_path / "lake"), "ops/audit",
                               filters={"actor": f"run:{result.run_id}"}).to_pylist()
            written = {e["target"] for e in trail if e["action"] == "write"}
            assert {"raw/uploads", "cleaned/aligned_frames", "cleaned/gps"} <= written
            assert all(e["partition"] == f"2026-11-20|{robot_type}" and e["files"]
                       for e in trail)

    # robot-002 (delivery) has duplicate messages: that partition's duplicate check fails
    assert evaluations["delivery"][("cleaned_quality_reports", "duplicate_rate")] is False
    assert evaluations["warehouse_amr"][("cleaned_quality_reports", "duplicate_rate")] is True
    for robot_type, checks in evaluations.items():
        assert checks[("cleaned_quality_reports", "null_rate")] is True, robot_type
        assert checks[("cleaned_quality_reports", "max_gap")] is True
        for asset in ("cleaned_imu", "cleaned_gps", "cleaned_lidar", "cleaned_camera_frames",
                      "cleaned_aligned_frames"):
            assert checks[(asset, "great_expectations")] is True, (robot_type, asset)
