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
    raw = rules["robolake-raw"]
    assert raw["Filter"]["Prefix"] == "lake/raw/"
    assert [(t["Days"], t["StorageClass"]) for t in raw["Transitions"]] == [
        (30, "STANDARD_IA"), (180, "GLACIER")]
    assert raw["Expiration"]["Days"] == 730
    assert "Expiration" not in rules["robolake-datasets"]  # kept while a version is live
    assert rules["robolake-ops"]["Expiration"]["Days"] == 2555


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
