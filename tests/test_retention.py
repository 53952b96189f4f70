"""Retention and tiering: configs/retention.yaml as S3 lifecycle rules on the moto server."""

from __future__ import annotations

import boto3
import pytest

from robolake.governance.retention import RETENTION_FILE, apply_lifecycle, load_rules


def test_rules_apply_as_s3_lifecycle_configuration(s3_endpoint):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                      region_name=s3_endpoint["AWS_REGION"],
                      aws_access_key_id=s3_endpoint["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_endpoint["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="gov-retention")
    apply_lifecycle(s3, "gov-retention", "lake")
    rules = {r["ID"]: r for r in
             s3.get_bucket_lifecycle_configuration(Bucket="gov-retention")["Rules"]}
    # the catalog's plain-file areas under their layer's rule; datasets are pinned
    assert {r["ID"]: r["Filter"]["Prefix"] for r in rules.values()} == {
        "robolake-raw-files": "lake/raw/files/",
        "robolake-raw-quarantine": "lake/raw/quarantine/",
        "robolake-features-cache": "lake/features/cache/",
        "robolake-annotations-media": "lake/annotations/media/",
        "robolake-annotations-tasks": "lake/annotations/tasks/",
        "robolake-notebooks": "lake/notebooks/"}
    raw = rules["robolake-raw-files"]
    assert [(t["Days"], t["StorageClass"]) for t in raw["Transitions"]] == [
        (30, "STANDARD_IA"), (180, "GLACIER")]
    assert raw["Expiration"]["Days"] == 730
    assert "Expiration" not in rules["robolake-features-cache"]
    # no rule reaches a Delta table: its live files would expire or become unreadable
    from robolake.governance.catalog import TABLES

    for table in TABLES:
        assert not any(f"lake/{table}/".startswith(r["Filter"]["Prefix"])
                       for r in rules.values()), table


def test_bad_rules_name_the_layer(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("layers:\n  raw: {infrequent_access: 200, archive: 100}\n")
    with pytest.raises(ValueError, match="layers.raw: days must be whole"):
        load_rules(bad)
    bad.write_text("layers:\n  raw: {hot: 3}\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['hot'\]"):
        load_rules(bad)
    assert {r.layer for r in load_rules(RETENTION_FILE)} == {
        "raw", "cleaned", "features", "datasets", "models", "ops"}


def test_storage_report_counts_bytes_per_layer_and_tier(s3_endpoint, tmp_path, capsys):
    from robolake.governance.retention import storage_report
    from robolake.storage import open_store
    from robolake_assets.cli import main

    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"],
                      region_name=s3_endpoint["AWS_REGION"],
                      aws_access_key_id=s3_endpoint["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_endpoint["AWS_SECRET_ACCESS_KEY"])
    s3.create_bucket(Bucket="gov-report")
    s3.put_object(Bucket="gov-report", Key="lake/raw/files/a.mcap", Body=b"x" * 100)
    s3.put_object(Bucket="gov-report", Key="lake/raw/files/b.mcap", Body=b"x" * 50,
                  StorageClass="GLACIER")
    s3.put_object(Bucket="gov-report", Key="lake/cleaned/imu/p.parquet", Body=b"x" * 7)
    lake = open_store("s3://gov-report/lake", s3_client=s3)
    assert storage_report(lake) == {("cleaned", "STANDARD"): (1, 7),
                                    ("raw", "GLACIER"): (1, 50), ("raw", "STANDARD"): (1, 100)}
    local = open_store(tmp_path)
    local.write_bytes("raw/files/c.mcap", b"y" * 30)
    assert main(["storage", "report", "--lake", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "raw          hot                    1             30" in out
