"""Lake backups: S3 versioning + cross-region replication rules on the moto server, objects
brought back as they were at a time, Delta tables restored to a version, a time and a pinned
snapshot, and files a vacuum deleted brought back from their noncurrent versions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import boto3
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from robolake import lake_backup
from robolake.storage import S3Store, open_store
from robolake.tables import append_rows, overwrite_table, read_table

ROLE = "arn:aws:iam::123456789012:role/robolake-replication"
SCHEMA = pa.schema([("robot_id", pa.string()), ("ts_ns", pa.int64())])


def s3(endpoint: dict, region: str):
    return boto3.client("s3", endpoint_url=endpoint["AWS_ENDPOINT_URL"], region_name=region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def buckets(s3_endpoint, request):
    """A lake bucket in us-east-1 and its standby in eu-west-1 (names unique per test)."""
    name = f"lake-{request.node.name[:20].replace('_', '-').lower()}-{time.time_ns() % 10**6}"
    primary, standby = s3(s3_endpoint, "us-east-1"), s3(s3_endpoint, "eu-west-1")
    primary.create_bucket(Bucket=name)
    standby.create_bucket(Bucket=f"{name}-dr",
                          CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    return primary, standby, name, f"{name}-dr"


def test_generated_rules():
    repl = lake_backup.replication_configuration("lake", "robolake-dr", ROLE)
    [rule] = repl["Rules"]
    assert repl["Role"] == ROLE and rule["Filter"] == {"Prefix": "lake/"}
    assert rule["Destination"]["Bucket"] == "arn:aws:s3:::robolake-dr"
    assert rule["Destination"]["ReplicationTime"] == {"Status": "Enabled",
                                                      "Time": {"Minutes": 15}}
    assert rule["DeleteMarkerReplication"] == {"Status": "Enabled"}
    life = {r["ID"]: r for r in lake_backup.lifecycle_configuration("lake")["Rules"]}
    assert life["robolake-noncurrent-versions"]["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 30}
    assert life["robolake-abort-multipart"]["Filter"] == {"Prefix": "lake/"}


def test_versioning_and_replication_applied_on_the_moto_server(buckets):
    primary, standby, bucket, replica = buckets
    before = lake_backup.check_protection(primary, bucket, "lake", replica, standby)
    assert not before["ok"]
    assert f"s3://{bucket}: Versioning.Status is Disabled, expected Enabled" in before["problems"]
    assert any("no enabled ReplicationConfiguration rule" in p for p in before["problems"])

    # botocore validates each configuration against the S3 API model before sending it
    for _ in range(2):  # idempotent
        after = lake_backup.apply_protection(primary, bucket, "lake", replica, ROLE, standby)
    assert after == {"ok": True, "problems": [], "rules": ["robolake-lake-to-standby"]}
    for client, name in ((primary, bucket), (standby, replica)):
        assert client.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
        rules = client.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
        assert {r["ID"] for r in rules} == {"robolake-noncurrent-versions",
                                            "robolake-abort-multipart"}
    stored = primary.get_bucket_replication(Bucket=bucket)["ReplicationConfiguration"]
    [rule] = stored["Rules"]
    # (moto reads Filter and DeleteMarkerReplication back as defaults; the rest round-trips)
    assert stored["Role"] == ROLE and rule["Status"] == "Enabled"
    assert rule["Destination"] == lake_backup.replication_configuration(
        "lake", replica, ROLE)["Rules"][0]["Destination"]
    assert standby.get_bucket_location(Bucket=replica)["LocationConstraint"] == "eu-west-1"


def test_an_object_comes_back_as_it_was_at_a_time(buckets):
    primary, standby, bucket, replica = buckets
    lake_backup.apply_protection(primary, bucket, "lake", replica, ROLE, standby)
    key = "lake/raw/files/a.mcap"
    primary.put_object(Bucket=bucket, Key=key, Body=b"first")
    first_at = primary.head_object(Bucket=bucket, Key=key)["LastModified"]
    time.sleep(1.1)  # S3 times are whole seconds
    primary.put_object(Bucket=bucket, Key=key, Body=b"second")
    primary.delete_object(Bucket=bucket, Key=key)
    assert lake_backup.restore_object(primary, bucket, key, first_at) is not None
    assert primary.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"
    assert lake_backup.restore_object(primary, bucket, key, datetime.now(UTC)) is None
    with pytest.raises(FileNotFoundError, match="did not exist at"):
        lake_backup.restore_object(primary, bucket, key, first_at - timedelta(hours=1))


def _robots(lake, key) -> list[str]:
    return sorted(read_table(lake, key, columns=["robot_id"])["robot_id"].to_pylist())


def _write_history(lake, key) -> list[list[str]]:
    """Three versions: v0 {a}, v1 {a, b}, v2 {z} (an overwrite gone wrong)."""
    append_rows(lake, key, [{"robot_id": "a", "ts_ns": 1}], SCHEMA)
    time.sleep(0.01)
    append_rows(lake, key, [{"robot_id": "b", "ts_ns": 2}], SCHEMA)
    time.sleep(0.01)
    overwrite_table(lake, key, pa.Table.from_pylist([{"robot_id": "z", "ts_ns": 3}], SCHEMA))
    return [["a"], ["a", "b"], ["z"]]


def test_delta_table_restored_to_a_version_a_time_and_a_pin(tmp_path):
    lake, key = open_store(tmp_path / "lake"), "cleaned/imu"
    states = _write_history(lake, key)
    result = lake_backup.restore_table(lake, key, version=1)
    assert (result.from_version, result.to_version, result.new_version) == (2, 1, 3)
    assert _robots(lake, key) == states[1]
    # again: already in that state, no commit
    assert lake_backup.restore_table(lake, key, version=1).new_version is None
    assert DeltaTable(lake.table_uri(key)).version() == 3

    v0_ms = DeltaTable(lake.table_uri(key)).history()[-1]["timestamp"]
    at = datetime.fromtimestamp(v0_ms / 1000, UTC)
    assert lake_backup.restore_table(lake, key, when=at).to_version == 0
    assert _robots(lake, key) == states[0]
    with pytest.raises(ValueError, match="no version committed at or before"):
        lake_backup.restore_table(lake, key, when=at - timedelta(days=1))
    with pytest.raises(ValueError, match="version 9 does not exist"):
        lake_backup.restore_table(lake, key, version=9)

    # a pinned snapshot of every table brings the lake back to that point
    append_rows(lake, "raw/uploads", [{"robot_id": "r", "ts_ns": 1}], SCHEMA)
    pinned = lake_backup.pin_table_versions(lake, "20261203T101500Z")
    assert pinned == {"cleaned/imu": 4, "raw/uploads": 0}
    assert lake_backup.pin_table_versions(lake, "20261203T101500Z") == pinned  # once per stamp
    overwrite_table(lake, key, pa.Table.from_pylist([{"robot_id": "bad", "ts_ns": 9}], SCHEMA))
    append_rows(lake, "raw/uploads", [{"robot_id": "s", "ts_ns": 2}], SCHEMA)
    restored = lake_backup.restore_pinned(lake, "20261203T101500Z")
    assert [(r.table, r.to_version) for r in restored] == [("cleaned/imu", 4),
                                                           ("raw/uploads", 0)]
    assert _robots(lake, key) == states[0] and _robots(lake, "raw/uploads") == ["r"]


def test_vacuumed_files_come_back_from_noncurrent_versions(buckets, s3_endpoint):
    primary, standby, bucket, replica = buckets
    lake_backup.apply_protection(primary, bucket, "lake", replica, ROLE, standby)
    lake = S3Store(f"s3://{bucket}/lake", dict(s3_endpoint), client=primary)
    key = "cleaned/gps"
    states = _write_history(lake, key)
    # the vacuum retention has passed: v0's and v1's files are deleted
    DeltaTable(lake.table_uri(key), storage_options=lake.delta_options).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False)
    with pytest.raises(RuntimeError, match="2 of its data files are gone"):
        lake_backup.restore_table(lake, key, version=1)
    undeleted = lake_backup.undelete_table_files(lake, key, 1)
    assert len(undeleted) == 2 and all(k.startswith(f"{key}/") for k in undeleted)
    assert lake_backup.undelete_table_files(lake, key, 1) == []  # all there now
    # deltalake's RESTORE holds the GIL, which would stall the in-process moto server:
    # the CLI runs it in its own process, as a person would
    env = {**os.environ, **s3_endpoint, "ROBOLAKE_LAKE": f"s3://{bucket}/lake"}
    out = subprocess.run([sys.executable, "-m", "robolake_assets.cli", "backup",
                          "restore-table", key, "--version", "1"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (f"{key}: restored version 1 as version 5 (was 4; 2 files "
                                  "back, 1 out)")
    assert _robots(lake, key) == states[1]


def test_every_robolake_command_in_the_runbook_exists():
    """docs/disaster-recovery.md's commands parse with the real CLI (placeholders filled)."""
    import re
    import shlex
    from pathlib import Path

    from robolake_assets.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "docs" / "disaster-recovery.md").read_text()
    text = re.sub(r"\s*\n\s*", " ", text)  # commands wrap across lines
    commands = [c for c in re.findall(r"`([^`]*robolake (?:backup|summary)[^`]*)`", text)
                if not c.startswith("robolake/") and "--help" not in c]
    assert len(commands) >= 12, commands
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command.replace("…", "x").replace("<stamp>", "20261203T091500Z")
                           .replace("<the stamp restored>", "20261203T091500Z"))
        argv = argv[argv.index("robolake") + 1:]
        if len(argv) == 2 and argv[0] == "backup":  # a name in prose: the action exists
            group = parser._subparsers._group_actions[0].choices["backup"]
            assert argv[1] in group._subparsers._group_actions[0].choices, command
            continue
        args = parser.parse_args(argv)  # exits (SystemExit) on an unknown command or flag
        assert args.func, command
