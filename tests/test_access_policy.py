"""Access control from configs/access_policy.yaml: the rules per role, layer and
classification, and the IAM policies generated from it enforced by the moto S3 server
(an engineer's credentials cannot read a restricted prefix; an admin's can)."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from robolake.governance.policy import (
    POLICY_FILE,
    bucket_policy,
    iam_policy,
    load_policy,
    write_bucket_policy,
    write_iam_policies,
)

REPO = Path(__file__).resolve().parents[1]


def test_policy_rules_follow_classification():
    policy = load_policy()
    assert not policy.allows("engineer", "read", "cleaned/gps")  # restricted
    assert not policy.allows("engineer", "read", "raw/files")  # camera images, GPS traces
    assert policy.allows("engineer", "read", "cleaned/imu")  # confidential at most
    assert policy.allows("admin", "read", "cleaned/gps")
    assert policy.allows("auditor", "read", "ops/audit")
    assert not policy.allows("auditor", "read", "cleaned/imu")  # robot ids: confidential
    assert not policy.allows("robot", "read", "datasets/registry")
    assert not policy.allows("engineer", "write", "cleaned/imu")


def test_policy_file_errors_name_the_field(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(POLICY_FILE.read_text().replace("ops: internal}", "ops: secret}", 1))
    with pytest.raises(ValueError, match=r"roles\.engineer\.read\.ops: 'secret'"):
        load_policy(bad)


def test_deploy_iam_policies_are_generated_from_the_policy_file(tmp_path):
    fresh = write_iam_policies(tmp_path, "robolake-lake")
    for path in fresh:
        committed = REPO / "deploy" / "iam" / path.name
        assert json.loads(committed.read_text()) == json.loads(path.read_text()), (
            f"{committed} is stale: regenerate it with robolake.governance.policy."
            "write_iam_policies")


def _client(service: str, endpoint: dict, key: dict | None = None):
    creds = ({"aws_access_key_id": key["AccessKeyId"],
              "aws_secret_access_key": key["SecretAccessKey"]} if key else
             {"aws_access_key_id": endpoint["AWS_ACCESS_KEY_ID"],
              "aws_secret_access_key": endpoint["AWS_SECRET_ACCESS_KEY"]})
    return boto3.client(service, endpoint_url=endpoint["AWS_ENDPOINT_URL"],
                        region_name=endpoint["AWS_REGION"], **creds)


def test_engineer_cannot_read_restricted_prefixes_on_s3_admin_can(s3_endpoint):
    bucket, policy = "gov-acl", load_policy()
    s3, iam = _client("s3", s3_endpoint), _client("iam", s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for key in ("lake/cleaned/gps/part-0.parquet", "lake/cleaned/imu/part-0.parquet"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"rows")
    keys = {}
    for role in ("engineer", "admin"):
        iam.create_user(UserName=f"gov-{role}")
        iam.put_user_policy(UserName=f"gov-{role}", PolicyName="lake",
                            PolicyDocument=json.dumps(iam_policy(policy, role, bucket, "lake")))
        keys[role] = iam.create_access_key(UserName=f"gov-{role}")["AccessKey"]
    reset = f"{s3_endpoint['AWS_ENDPOINT_URL']}/moto-api/reset-auth"
    before = requests.post(reset, data=b"0", timeout=10).json()
    try:  # from here on the server authenticates and authorizes every request (IAM)
        engineer, admin = (_client("s3", s3_endpoint, keys[r]) for r in ("engineer", "admin"))
        imu = engineer.get_object(Bucket=bucket, Key="lake/cleaned/imu/part-0.parquet")
        assert imu["Body"].read() == b"rows"
        with pytest.raises(ClientError) as denied:
            engineer.get_object(Bucket=bucket, Key="lake/cleaned/gps/part-0.parquet")
        assert denied.value.response["Error"]["Code"] == "AccessDenied"
        gps = admin.get_object(Bucket=bucket, Key="lake/cleaned/gps/part-0.parquet")
        assert gps["Body"].read() == b"rows"
    finally:
        requests.post(reset, data=str(before["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]).encode(),
                      timeout=10)


def test_gateway_catalog_search_shows_a_role_only_what_it_may_read(tmp_path):
    from gateway_fixtures import make_settings, start_gateway

    gw = start_gateway(make_settings(tmp_path))
    try:
        found = {}
        for role in ("engineer", "admin", "auditor"):
            with gw.client(gw.token(gw.key(role))) as c:
                r = c.get("/api/v1/catalog/search", params={"q": "gps"})
                assert r.status_code == 200, r.text
                found[role] = {h["name"] for h in r.json()}
    finally:
        gw.stop()
    restricted = {"cleaned/gps", "cleaned/aligned_frames.gps_lat"}
    internal = {"cleaned/quality_reports.gps_duplicates"}
    assert restricted | internal <= found["admin"]
    assert not restricted & found["engineer"] and internal <= found["engineer"]
    assert found["auditor"] <= found["engineer"] < found["admin"]


def test_deploy_bucket_policy_is_generated_from_the_policy_file(tmp_path):
    fresh = write_bucket_policy(tmp_path, "robolake-lake")
    committed = REPO / "deploy" / "iam" / fresh.name
    assert committed.read_text() == fresh.read_text(), (
        f"{committed} is stale: regenerate it with robolake.governance.policy."
        "write_bucket_policy")
    policy, doc = load_policy(), json.loads(fresh.read_text())
    base = "arn:aws:s3:::robolake-lake/lake/"
    for action, s3_actions in (("read", ["s3:GetObject"]),
                               ("write", ["s3:PutObject", "s3:DeleteObject"])):
        for prefix in ("cleaned/gps", "raw/files", "cleaned/imu", "ops/audit", "raw/uploads"):
            [deny] = [s for s in doc["Statement"] if s["Action"] == s3_actions
                      and f"{base}{prefix}/*" in s["Resource"]]
            readers = [r for r in sorted(policy.roles) if policy.allows(r, action, prefix)]
            assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
            assert deny["Condition"] == {"StringNotEquals": {
                "aws:PrincipalTag/robolake-role": readers}}, (action, prefix)
    sids = {s["Sid"]: s for s in doc["Statement"]}
    restricted = sids["DenyReadUnlessAdmin"]["Resource"]  # personal data: admin only
    assert {f"{base}{p}/*" for p in ("cleaned/gps", "cleaned/camera_frames", "raw/files",
                                     "features/cache")} <= set(restricted)
    assert f"{base}cleaned/imu/*" in sids["DenyReadUnlessAdminEngineer"]["Resource"]


def test_bucket_policy_on_the_moto_server(s3_endpoint):
    """moto stores the policy and returns it unchanged. It also applies a bucket policy's
    Deny to object reads, but by action and resource only: it ignores Principal and the
    aws:PrincipalTag condition (moto/iam/policy_conditions.py knows StringEquals only), so in
    moto our Deny refuses a lake prefix to every caller; keys outside the lake's prefixes
    stay readable. The per-role effect (engineer refused, admin allowed) is shown with the
    identity policies above; the tag condition itself is checked only as generated JSON."""
    bucket = "gov-bucket-policy"
    s3 = _client("s3", s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for key in ("lake/cleaned/gps/part-0.parquet", "lake/cleaned/imu/part-0.parquet",
                "elsewhere/notes.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"rows")
    doc = bucket_policy(load_policy(), bucket, "lake")
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(doc))
    try:
        assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == doc
        for key in ("lake/cleaned/gps/part-0.parquet", "lake/cleaned/imu/part-0.parquet"):
            with pytest.raises(ClientError) as denied:
                s3.get_object(Bucket=bucket, Key=key)
            assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert s3.get_object(Bucket=bucket, Key="elsewhere/notes.txt")["Body"].read() == b"rows"
    finally:
        s3.delete_bucket_policy(Bucket=bucket)
    assert s3.get_object(Bucket=bucket, Key="lake/cleaned/gps/part-0.parquet")["Body"].read()
