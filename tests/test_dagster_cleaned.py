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


def _check_readable_metadata(mats: dict, result, robot_type: str) -> None:
    """Issue 17 finding 4: totals are not `removed_`, figures rounded, no -1 or blank
    values, every column described, check results name their partition."""
    meta = {name: {k: v.value for k, v in m.materialization.metadata.items()}
            for name, m in mats.items()}
    report = meta["cleaned_quality_reports"]
    assert report["decoded_imu_samples"] > 0 and "removed_imu_samples" not in report
    assert "removed_imu_duplicates" in report and "null_rate" in report
    assert "flagged_camera_black" in report and "removed_camera_black" not in report
    for name in ("null_rate", "duplicate_rate", "latency_s", "rows_per_s", "max_gap_s"):
        value = report[name]
        assert value == float(f"{value:.4g}"), (name, value)  # 4 significant digits
    raw = meta["raw_uploads"]
    assert raw["mean_quality_score"] == round(raw["mean_quality_score"], 1)
    assert all(v not in ("", -1, None) for v in raw.values())
    for asset in ("raw_uploads", "cleaned_aligned_frames", "cleaned_gps", "cleaned_imu",
                  "cleaned_lidar", "cleaned_camera_frames", "cleaned_quality_reports"):
        columns = meta[asset]["dagster/column_schema"].columns
        assert all(c.description for c in columns), (asset, [c.name for c in columns
                                                             if not c.description])
    checks = result.get_asset_check_evaluations()
    assert len(checks) == 3 + 5 + 5  # raw, quality thresholds, GX suites
    assert {c.metadata["partition"].value for c in checks} == {f"2026-11-20|{robot_type}"}


def _first_sensor_tick(defs, instance, tmp_path: Path) -> dg.SensorResult:
    """Issue 17 finding 2: the upload sensor from an empty cursor over an ingested lake."""
    from robolake_resources.lake import LakeResource, LandingResource

    sensor = defs.get_repository_def().get_sensor_def("new_uploads_sensor")
    resources = {"landing": LandingResource(uri=str(tmp_path / "landing")),
                 "lake": LakeResource(root=str(tmp_path / "lake"))}
    with dg.build_sensor_context(instance=instance, cursor=None, definitions=defs,
                                 resources=resources) as ctx:
        result = sensor.evaluate_tick(ctx)
    assert result.skip_message == "3 new file(s), none to run now"
    return result


def _run_again(job, instance) -> None:
    """A second run of a partition cleans nothing (yet judges the whole partition); a run
    tagged robolake/reclean cleans its uploads again."""
    key = partition_key("2026-11-20", "delivery")
    for tags, cleaned_now in (({}, 0), ({"robolake/reclean": "true"}, 2)):
        result = job.execute_in_process(instance=instance, partition_key=key, tags=tags)
        assert result.success
        meta = {m.asset_key.to_user_string(): m.materialization.metadata
                for m in result.get_asset_materialization_events()}["cleaned_aligned_frames"]
        assert (meta["uploads_cleaned"].value, meta["uploads_in_partition"].value) == (
            cleaned_now, 2)
        assert meta["dagster/row_count"].value == 240
        assert meta["rows_written"].value == 120 * cleaned_now
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()
                  if e.asset_key.to_user_string() == "cleaned_quality_reports"}
        assert checks["duplicate_rate"] is False and checks["null_rate"] is True


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
            _check_readable_metadata(mats, result, robot_type)
        # after these runs (as after `make demo`), a first sensor tick has nothing to run
        assert _first_sensor_tick(defs, instance, tmp_path).run_requests == []
        _run_again(job, instance)


    # robot-002 (delivery) has duplicate messages: that partition's duplicate check fails
    assert evaluations["delivery"][("cleaned_quality_reports", "duplicate_rate")] is False
    assert evaluations["warehouse_amr"][("cleaned_quality_reports", "duplicate_rate")] is True
    for robot_type, checks in evaluations.items():
        assert checks[("cleaned_quality_reports", "null_rate")] is True, robot_type
        assert checks[("cleaned_quality_reports", "max_gap")] is True
        for asset in ("cleaned_imu", "cleaned_gps", "cleaned_lidar", "cleaned_camera_frames",
                      "cleaned_aligned_frames"):
            assert checks[(asset, "great_expectations")] is True, (robot_type, asset)
