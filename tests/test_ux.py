"""What a newcomer touches (issue 17): automation that cleans any day, readable partitions,
CLI help, `make ui`, MLflow's view. The findings that need an ingested lake are checked
where the suite already ingests one: metadata and the sensor after the demo's files in
test_dagster_cleaned.py, CLI runs under their jobs in test_dagster_raw.py."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import dagster as dg

from robolake.simulate.faults import FAULT_KINDS
from robolake.storage import open_store
from robolake_partitions import partition_key

DAY = "2026-11-27"
REPO = Path(__file__).resolve().parents[1]


def test_raw_materialized_alone_is_cleaned_by_automation():
    """Finding 1: a raw partition of an earlier day (UI, `dagster job launch`) is cleaned (and
    then scored) by the automation sensor, which is on by default (test_definitions); eager
    alone considered only the newest day."""
    from robolake_assets.definitions import defs

    key = partition_key(DAY, "delivery")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("robot_type", ["delivery"])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.total_requested == 0
        instance.report_runless_asset_event(dg.AssetMaterialization("raw_uploads", partition=key))
        second = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                   cursor=first.cursor)
    requested = {r.key.to_user_string(): r.true_subset.expensively_compute_partition_keys()
                 for r in second.results if r.true_subset.size}
    assert set(requested) == {"cleaned_imu", "cleaned_gps", "cleaned_lidar",
                              "cleaned_camera_frames", "cleaned_aligned_frames",
                              "cleaned_quality_reports", "corner_case_scores"}
    assert all(keys == {str(key)} for keys in requested.values())


def test_partitions_start_where_the_data_does(tmp_path):
    """Finding 5: the daily dimension starts at the lake's first date (at most a week back
    when the lake is empty), never before the acceptance floor; an explicit start wins."""
    from robolake.settings import Settings
    from robolake.tables import append_new_rows
    from robolake_partitions import daily_start

    today = dt.date(2026, 12, 3)
    settings = Settings.from_env({"ROBOLAKE_LAKE": str(tmp_path / "lake")})
    assert daily_start(settings, today) == "2026-11-26"  # empty lake: a week back
    import pyarrow as pa

    from robolake import raw

    schema = pa.schema([("landing_key", pa.string()), ("version", pa.string()),
                        ("date", pa.string())])
    append_new_rows(open_store(tmp_path / "lake"), raw.LANDING_INDEX,
                    [{"landing_key": "a.mcap", "version": "1", "date": "2026-10-02"}], schema,
                    keys=("landing_key", "version"))
    assert daily_start(settings, today) == "2026-10-02"  # older data keeps its days
    explicit = Settings.from_env({"ROBOLAKE_LAKE": str(tmp_path / "lake"),
                                  "ROBOLAKE_PARTITIONS_START": "2026-11-01"})
    assert daily_start(explicit, today) == "2026-11-01"


def test_sensor_holds_files_until_their_day_is_a_partition():
    """Files dated before the loaded first day stay in the cursor for the next ticks."""
    from robolake import raw
    from robolake_sensors.uploads import _hold, _with_held

    old = raw.LandingFile("old.mcap", 10, 5)
    cursor = _hold(json.dumps({"watermark_ns": 9, "at_watermark": []}),
                   [raw.Assignment(old, "mcap", "2016-01-01", "delivery")])
    assert json.loads(cursor)["held"] == ["old.mcap@10:5:0"]
    assert _with_held([old], [], cursor) == [old]
    assert _with_held([], [], cursor) == []  # deleted meanwhile


def test_cli_help_describes_commands(capsys):
    """Finding 6: descriptions, the --through choices, simulate's options and fault kinds."""
    from robolake_assets.cli import main

    assert main(["ingest", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Scan the landing zone once" in text
    assert "{raw,cleaned,features,datasets,models}" in text
    assert main(["ingest", "--through", "bogus"]) == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert main(["simulate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "number of robots" in text and "random seed" in text
    assert all(kind in text.replace("- ", "-") for kind in FAULT_KINDS)


def test_launch_tags_ask_for_a_reclean_only_when_told():
    from robolake_assets.cli_launch import launch_tags

    assert launch_tags("2026-11-27|delivery") == {
        "robolake/trigger": "cli-launch", "dagster/partition": "2026-11-27|delivery",
        "dagster/partition/date": "2026-11-27", "dagster/partition/robot_type": "delivery"}
    assert launch_tags("2026-11-27|delivery", reclean=True)["robolake/reclean"] == "true"


def test_datasets_list_is_a_plain_table(tmp_path):
    """Finding 6: a readable table, without importing Dagster or the dataset build code."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from robolake.datasets.build import REGISTRY, REGISTRY_SCHEMA

    row = {"name": "ego_motion_demo", "version": "1.0.0", "spec_hash": "ab" * 32,
           "input_fingerprint": "x", "created_ns": 1_796_000_000 * 10**9, "inputs": "{}",
           "manifest_key": "m", "samples_train": 3540, "samples_val": 400, "samples_test": 410,
           "recordings": 10, "missing_rate": 0.0123, "statistics": "{}"}
    write_deltalake(str(tmp_path / REGISTRY), pa.Table.from_pylist([row], REGISTRY_SCHEMA))
    code = ("import sys; from robolake_assets.cli import main; "
            f"rc = main(['datasets', 'list', '--lake', {str(tmp_path)!r}]); "
            "print(sorted(m for m in ('dagster', 'robolake.datasets.build', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO, timeout=120).stdout.splitlines()
    assert out[0].split() == ["dataset", "version", "created", "(UTC)", "train", "val", "test",
                              "recordings", "missing", "spec", "hash"]
    assert out[2].split() == ["ego_motion_demo", "1.0.0", "2026-11-30", "00:53", "3540", "400",
                              "410", "10", "1.2%", "abababababab"]
    assert "i64" not in "\n".join(out) and out[-1] == "[]"


def test_make_ui_runs_from_dagster_home(tmp_path):
    """Finding 8: `dagster dev` warns when its working folder holds a dagster.yaml that is not
    DAGSTER_HOME's; `make ui` starts it from DAGSTER_HOME with the shipped config there,
    which has no first-visit dialog."""
    import yaml

    home = tmp_path / "home"
    out = subprocess.run(["make", "-n", "ui", f"DAGSTER_HOME={home}", "UI_PORT=3999"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert f"cp dagster.yaml {home}/dagster.yaml" in out
    assert f"cd {home} && " in out and f"-w {REPO}/workspace.yaml" in out and "-p 3999" in out
    assert yaml.safe_load((REPO / "dagster.yaml").read_text())["nux"] == {"enabled": False}


def test_freshness_check_fails_past_the_sla(tmp_path, monkeypatch):
    """Part 2: the cleaned layer's lag behind the landing zone is the age of the oldest file
    waiting for it; the check fails past ROBOLAKE_FRESHNESS_MAX_LAG_S and passes once the
    file has its verdict (a quarantined file waits for nothing)."""
    import os
    import time

    from robolake import raw
    from robolake.settings import Settings
    from robolake_assets.definitions import build_definitions

    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    stale = landing / "cut.mcap"
    stale.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 64)
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    monkeypatch.setenv("ROBOLAKE_FRESHNESS_MAX_LAG_S", "5400")  # 1.5 h: configurable
    monkeypatch.setenv("ROBOLAKE_LAKE", str(lake))  # resources read them through EnvVar
    monkeypatch.setenv("ROBOLAKE_LANDING", str(landing))
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def("cleaned_freshness")
    with dg.instance_for_test() as instance:
        [late] = job.execute_in_process(instance=instance).get_asset_check_evaluations()
        day = time.strftime("%Y-%m-%d", time.gmtime(two_hours_ago))
        raw.ingest_partition(open_store(landing), open_store(lake), day, "unidentified")
        [fresh] = job.execute_in_process(instance=instance).get_asset_check_evaluations()
    assert (late.check_name, late.passed, late.severity) == (
        "freshness", False, dg.AssetCheckSeverity.ERROR)
    meta = {k: v.value for k, v in late.metadata.items()}
    assert 7100 < meta["lag_s"] < 7400 and meta["max_lag_s"] == 5400
    assert (meta["files_waiting"], meta["oldest_file"]) == (1, "cut.mcap")
    assert meta["oldest_partition"] == f"{day}|unidentified"
    assert fresh.passed and fresh.metadata["files_waiting"].value == 0


def test_great_expectations_imports_in_a_daemon_launched_step():
    """A step launched by the daemon (`make ui`) imports great-expectations, which imports
    pyspark.sql.connect; that module calls sys.exit(0) in a process whose __main__ has no
    file unless Spark Connect's requirements are installed: every UI-launched cleaning then
    failed with `SystemExit: 0`. `python -c` has such a __main__ too."""
    code = ("import sys; from pyspark.testing.connectutils import should_test_connect, "
            "connect_requirement_message as why; print(should_test_connect, why)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.stdout.split() == ["True"], out.stdout + out.stderr
