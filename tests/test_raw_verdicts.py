"""A verdict for every file: hostile names, identities and links, content duplicates across
files, re-runs that settle, failures that are not retried, and one error line from the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl

from robolake import cleaned, raw
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_assets.raw import raw_uploads
from robolake_partitions import partition_key
from robolake_resources.lake import LakeResource, LandingResource
from tests.conftest import land

HUSKY = {"robot_id": "husky-01", "robot_type": "husky", "region": "us-east"}
BAG = "robot_localization_test1_husky.bag"


def _rows(lake) -> dict[str, dict]:
    return {r["file_name"]: r for r in read_table(lake, raw.RAW_UPLOADS).to_pylist()}


BAD_IDENTITIES = {
    "forged.bag": ({**HUSKY, "robot_id": "r1\n2026-12-01 dagster - ERROR - \x1b[31mforged"},
                   "robot_id='r1\\n2026-12-01 dagster - ERROR - \\x1b[3... (43 chars) holds "
                   "control"),
    "huge.bag": ({**HUSKY, "robot_id": "r" * 10_000},
                 "robot_id is 10000 characters long; expected at most 128"),
    "bidi.bag": ({**HUSKY, "robot_id": "robot\u202e10-tobor"}, "robot_id='robot\\u202e10-tobor'"),
    "types.bag": ({"robot_id": {"a": [1, 2]}, "robot_type": 123, "region": "x"},
                  "robot_id is a JSON dict ({'a': [1, 2]}); expected a string"),
    "reserved.bag": ({**HUSKY, "robot_type": "unidentified"},
                     "robot_type 'unidentified' is reserved"),
}


def test_identity_values_are_validated(shared_data: Path, dirs):
    landing_dir, lake_dir = dirs
    for name, (identity, _) in BAD_IDENTITIES.items():
        land(landing_dir, shared_data / BAG, identity, name=name)
    logged: list[str] = []
    raw.ingest_landing(open_store(landing_dir), open_store(lake_dir), log=logged.append)
    rows = _rows(open_store(lake_dir))
    for name, (_, words) in BAD_IDENTITIES.items():
        row = rows[name]
        assert (row["status"], row["robot_type"], row["robot_id"]) == (
            "quarantined", raw.UNIDENTIFIED, None), name
        [reason] = row["reasons"]
        assert reason.startswith(f"{name}: invalid robot identity in {name}.meta.json: "), reason
        assert words in reason, reason
    # nothing a sidecar holds reaches a log line or a reason unescaped
    for text in logged + [r for row in rows.values() for r in row["reasons"]]:
        assert not any(ch in text for ch in "\n\x1b\u202e"), text
        assert len(text) < 500


def test_embedded_identity_disagreeing_with_the_uploader_is_quarantined(dirs):
    """The gateway writes the token's identity into the sidecar: a file whose own 'robot'
    record names another robot is believed by neither side."""
    landing_dir, lake_dir = dirs
    simulate_fleet(landing_dir, robots=2, date="2026-11-20", minutes=0.1, seed=3,
                   robot_types=["delivery"])
    own, other = sorted(landing_dir.glob("*.mcap"))
    Path(f"{own}.meta.json").write_text(json.dumps(  # the same robot: agrees, accepted
        {"robot_id": "robot-000", "robot_type": "delivery", "region": "eu-west"}))
    Path(f"{other}.meta.json").write_text(json.dumps(
        {"robot_id": "robot-000", "robot_type": "delivery", "region": "eu-west"}))
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    raw.ingest_landing(landing, lake)
    rows = _rows(lake)
    assert rows[own.name]["status"] == "accepted"
    bad = rows[other.name]
    assert (bad["status"], bad["robot_type"], bad["robot_id"]) == (
        "quarantined", "unidentified", None)
    assert bad["reasons"] == [
        f"{other.name}: identity conflict: the MCAP metadata record 'robot' says robot_id "
        f"'robot-001' but the sidecar {other.name}.meta.json (the uploader's word) says "
        "'robot-000'; neither is trusted: re-upload with the robot's own credentials or fix "
        "the recorder's configuration"]


def test_long_names_symlinks_and_unreadable_files_get_verdicts(shared_data: Path, dirs,
                                                                tmp_path: Path):
    landing_dir, lake_dir = dirs
    long_name = "recording-" + "x" * 230 + ".bag"  # 244 characters: copies used to fail
    land(landing_dir, shared_data / BAG, name=long_name)  # no identity: quarantined
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY)  # a good neighbour
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"do not copy me")
    (landing_dir / "link.bag").symlink_to(secret)
    (landing_dir / "unreadable.bag").write_bytes(b"#ROSBAG V2.0\n")
    os.chmod(landing_dir / "unreadable.bag", 0)
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    raw.ingest_landing(landing, lake)
    rows = _rows(lake)
    assert rows["husky_ros2_converted.mcap"]["status"] == "flagged"  # usable (no CRCs)

    long_row = rows[long_name]
    assert long_row["status"] == "quarantined" and "no robot identity" in long_row["reasons"][0]
    copy_name = long_row["raw_key"].rsplit("/", 1)[1]
    assert len(copy_name) <= raw.SAFE_NAME_CHARS and copy_name.endswith(".bag")
    assert (lake_dir / long_row["raw_key"]).read_bytes() == (shared_data / BAG).read_bytes()
    notes = json.loads((lake_dir / (long_row["raw_key"] + ".reasons.json")).read_text())
    assert notes["file_name"] == long_name and notes["landing_key"] == long_name

    link = rows["link.bag"]
    assert (link["status"], link["raw_key"]) == ("quarantined", None)
    assert link["reasons"] == ["link.bag: a symbolic link: links are not followed (upload the "
                               "file itself)"]
    assert not any(p.is_file() and p.read_bytes() == b"do not copy me"
                   for p in lake_dir.rglob("*"))

    if os.geteuid() != 0:  # root reads a file whatever its mode
        assert "could not be read" in rows["unreadable.bag"]["reasons"][0]
    assert rows["unreadable.bag"]["status"] == "quarantined"
    # a re-run has nothing to do
    assert all(not r.new_rows for r in raw.ingest_landing(landing, lake).values())


def test_converted_copy_and_overlapping_recordings_are_kept_once(shared_data: Path, dirs):
    landing_dir, lake_dir = dirs
    # the same drive as a ROS 1 bag and as its MCAP conversion, one identity
    land(landing_dir, shared_data / BAG, HUSKY)
    land(landing_dir, shared_data / "husky_ros2_converted.mcap", HUSKY)
    # two simulated fleets of one day with different seeds: both hold robot-000 at 08:00
    for seed in (1, 2):
        simulate_fleet(landing_dir / f"seed{seed}", robots=1, date="2026-11-20", minutes=0.2,
                       seed=seed, robot_types=["delivery"])
    landing, lake = open_store(landing_dir), open_store(lake_dir)
    for day, robot_type in raw.ingest_landing(landing, lake):
        cleaned.clean_partition(lake, day, robot_type)
    rows = _rows(lake)
    statuses = {n: r["status"] for n, r in rows.items() if n.endswith((".bag", "mcap"))}
    assert sorted(statuses.values()).count("duplicate") == 1  # one of the husky pair

    imu = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"]))
    husky = imu.filter(pl.col("robot_id") == "husky-01")
    assert husky.height == 11_865
    for table in ("imu", "gps", "lidar", "camera", "aligned"):
        frame = pl.from_arrow(read_table(lake, cleaned.TABLES[table]))
        topic = "lidar_topic" if table == "aligned" else "topic"
        sim = frame.filter(pl.col("robot_id") == "robot-000")
        # each (robot_id, topic, ts_ns) once across the lake, all from one of the two uploads
        assert sim.select("robot_id", topic, "ts_ns").is_duplicated().sum() == 0, table
        assert sim["upload_id"].n_unique() == 1, table
    reports = {r["upload_id"]: r for r in read_table(lake, cleaned.TABLES["report"]).to_pylist()
               if r["robot_id"] == "robot-000"}
    first, second = sorted(reports.values(), key=lambda r: r["imu_overlap"])
    assert first["imu_overlap"] == 0 and first["aligned_frames"] > 0
    assert second["imu_overlap"] == second["imu_samples"] - second["imu_outliers"] - (
        second["imu_duplicates"])
    assert second["aligned_frames"] == 0 and second["aligned_overlap"] > 0
    assert any("overlap other uploads of robot-000" in n for n in second["notes"])
    # cleaning again changes nothing
    before = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"])).sort("upload_id", "ts_ns")
    for day, robot_type in {(r["date"], r["robot_type"]) for r in rows.values()}:
        cleaned.clean_partition(lake, day, robot_type)
    after = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"])).sort("upload_id", "ts_ns")
    assert after.equals(before)


def test_touched_file_is_recognised_once(shared_data: Path, tmp_path: Path, monkeypatch,
                                         capsys):
    from robolake_assets.cli import main

    landing = tmp_path / "landing"
    recording = land(landing, shared_data / "husky_ros2_converted.mcap", HUSKY)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    argv = ["ingest", "--through", "raw", "--landing", str(landing),
            "--lake", str(tmp_path / "lake")]
    assert main(argv) == 0
    os.utime(recording, (time.time() + 60, time.time() + 60))  # touched, bytes unchanged
    assert main(argv) == 0
    assert "1 partition(s) to ingest" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 partition(s) to ingest" in capsys.readouterr().out
    assert read_table(open_store(tmp_path / "lake"), raw.RAW_UPLOADS).num_rows == 1


def test_a_deterministic_failure_is_not_retried(tmp_path: Path):
    not_a_folder = tmp_path / "landing"
    not_a_folder.write_text("a file where the landing folder should be")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("robot_type", ["husky"])
    started = time.monotonic()
    result = dg.materialize(
        [raw_uploads], instance=instance, partition_key=partition_key("2015-05-21", "husky"),
        resources={"landing": LandingResource(uri=str(not_a_folder)),
                   "lake": LakeResource(root=str(tmp_path / "lake"))},
        raise_on_error=False)
    assert not result.success
    assert time.monotonic() - started < 30  # the Spot policy would wait 30 s before a retry
    events = [e.event_type_value for e in result.all_events]
    assert events.count("STEP_FAILURE") == 1 and "STEP_UP_FOR_RETRY" not in events
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "not retried" in failure.step_failure_data.user_failure_data.description


def test_cli_prints_one_error_line_when_storage_is_unreachable(tmp_path: Path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"),
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}
    cmd = [sys.executable, "-m", "robolake_assets.cli", "ingest", "--through", "raw",
           "--landing", "s3://nowhere/landing", "--lake", str(tmp_path / "lake")]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("robolake: error: cannot reach storage at http://127.0.0.1:9 (")
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert "Traceback" in debug.stderr and debug.stderr.strip().endswith(lines[0])


DIES = """
import os, signal, dagster as dg
from robolake_assets.cli import cli_run_tags

@dg.op
def die():
    os.kill(os.getpid(), signal.SIGKILL)

@dg.job
def doomed():
    die()

doomed.execute_in_process(instance=dg.DagsterInstance.get(), tags=cli_run_tags())
"""


def test_runs_of_a_killed_cli_process_are_marked_failed(tmp_path: Path, monkeypatch):
    from robolake_assets.cli import fail_dead_cli_runs, open_instance

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    proc = subprocess.run([sys.executable, "-c", DIES], env={**os.environ}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    instance = open_instance(home)
    [run] = instance.get_runs()
    assert run.status == dg.DagsterRunStatus.STARTED  # what the kill left behind
    assert fail_dead_cli_runs(instance) == [run.run_id]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert fail_dead_cli_runs(instance) == []


def test_safe_file_name():
    assert raw.safe_file_name("plain-name_1.mcap") == "plain-name_1.mcap"
    spaced = raw.safe_file_name("with space\n.bag")
    assert spaced.startswith("with_space_~") and spaced.endswith(".bag")
    long = raw.safe_file_name("a" * 300 + ".mcap")
    assert len(long) == raw.SAFE_NAME_CHARS and long.endswith(".mcap")
    assert raw.safe_file_name("a" * 300) != raw.safe_file_name("a" * 301)
