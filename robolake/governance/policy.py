"""Access control from one policy file (configs/access_policy.yaml): per role and layer, the
most sensitive classification the role may read or write. The same file yields the IAM
identity policies of deploy/iam/ (`iam_policy`) and the lake bucket's policy
(`bucket_policy`, deploy/iam/bucket-policy.json), so the lake enforces what the platform
says."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from robolake.governance import catalog

POLICY_FILE = Path(__file__).resolve().parents[2] / "configs" / "access_policy.yaml"
POLICY_ENV = "ROBOLAKE_ACCESS_POLICY"
ACTIONS = ("read", "write")
S3_ACTIONS = {"read": ["s3:GetObject"], "write": ["s3:PutObject", "s3:DeleteObject"]}
ROLE_TAG = "robolake-role"  # IAM principal tag naming the role (bucket policy conditions)
BUCKET_POLICY_FILE = "bucket-policy.json"


@dataclass(frozen=True)
class Policy:
    roles: dict[str, dict[str, dict[str, str]]]  # role -> action -> layer -> max level

    def allows(self, role: str, action: str, table_or_prefix: str) -> bool:
        """May `role` read/write the catalog table or file area (by its classification)?"""
        return self.allows_level(role, action, *_layer_and_level(table_or_prefix))

    def allows_level(self, role: str, action: str, layer: str, level: str) -> bool:
        """May `role` read/write data of `level` in `layer`?"""
        limit = self.roles.get(role, {}).get(action, {}).get(layer)
        return limit is not None and catalog.LEVELS.index(level) <= catalog.LEVELS.index(limit)


def _layer_and_level(key: str) -> tuple[str, str]:
    if key in catalog.TABLES:
        t = catalog.TABLES[key]
        return t.layer, t.classification
    if key in catalog.FILE_AREAS:
        a = catalog.FILE_AREAS[key]
        return a.layer, a.classification
    raise KeyError(f"{key!r} is neither a table nor a file area of the catalog")


def policy_path() -> Path:
    """$ROBOLAKE_ACCESS_POLICY, else configs/access_policy.yaml of the checkout, else of the
    working directory (an installed package, e.g. the image's /opt/robolake)."""
    if os.environ.get(POLICY_ENV):
        return Path(os.environ[POLICY_ENV])
    local = Path.cwd() / "configs" / "access_policy.yaml"
    return POLICY_FILE if POLICY_FILE.exists() or not local.exists() else local


def load_policy(path: Path | None = None) -> Policy:
    """The policy file, checked: known roles, actions, layers and levels (errors name them)."""
    from robolake.gateway.keys import ROLES

    path = path or policy_path()

    data = yaml.safe_load(Path(path).read_text()) or {}
    layers = {t.layer for t in catalog.TABLES.values()} | {"models"}
    roles = data.get("roles") or {}
    for role, rules in roles.items():
        where = f"{path}: roles.{role}"
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role (expected one of {', '.join(ROLES)})")
        for action, limits in (rules or {}).items():
            if action not in ACTIONS:
                raise ValueError(f"{where}.{action}: expected read or write")
            for layer, level in (limits or {}).items():
                if layer not in layers or level not in catalog.LEVELS:
                    raise ValueError(f"{where}.{action}.{layer}: {level!r} must be a level "
                                     f"{catalog.LEVELS} of a layer {sorted(layers)}")
    missing = set(ROLES) - set(roles)
    if missing:
        raise ValueError(f"{path}: roles {sorted(missing)} have no rules")
    return Policy({r: {a: dict(v or {}) for a, v in (rules or {}).items()}
                   for r, rules in roles.items()})


def _prefixes() -> list[str]:
    return sorted([*catalog.TABLES, *catalog.FILE_AREAS])


def iam_policy(policy: Policy, role: str, bucket: str, root: str = "") -> dict:
    """The IAM identity policy of `role` on the lake at s3://bucket/root: object access to
    exactly the tables and file areas the policy file allows, and an explicit deny on the
    rest (so no broader grant attached elsewhere can open a restricted prefix)."""
    base = _arn_base(bucket, root)
    statements = []
    for action in ACTIONS:
        allowed = [p for p in _prefixes() if policy.allows(role, action, p)]
        denied = [p for p in _prefixes() if p not in allowed]
        for effect, keys in (("Allow", allowed), ("Deny", denied)):
            if keys:
                statements.append({
                    "Sid": f"{effect}{action.title()}", "Effect": effect,
                    "Action": S3_ACTIONS[action],
                    "Resource": [f"{base}{k}/*" for k in keys]})
    statements.append({"Sid": "ListLake", "Effect": "Allow", "Action": ["s3:ListBucket"],
                       "Resource": [f"arn:aws:s3:::{bucket}"]})
    return {"Version": "2012-10-17", "Statement": statements}


def write_iam_policies(out_dir: Path, bucket: str, root: str = "lake",
                       policy: Policy | None = None) -> list[Path]:
    """deploy/iam/<role>.json for every role (regenerate after changing the policy file)."""
    policy = policy or load_policy()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for role in sorted(policy.roles):
        path = out_dir / f"{role}.json"
        path.write_text(json.dumps(iam_policy(policy, role, bucket, root), indent=1) + "\n")
        paths.append(path)
    return paths


def _arn_base(bucket: str, root: str) -> str:
    return f"arn:aws:s3:::{bucket}/{root.strip('/') + '/' if root.strip('/') else ''}"


def bucket_policy(policy: Policy, bucket: str, root: str = "") -> dict:
    """The lake bucket's resource policy: for each action and group of tables and file areas
    with the same readers (writers), an explicit Deny to every principal whose IAM tag
    `robolake-role` is not one of them (Deny to all when no role may). It holds even for a
    principal whose identity policies grant more (e.g. s3:* from another team's policy);
    pipeline service accounts carry the tag of the role they act as."""
    base = _arn_base(bucket, root)
    statements = []
    for action in ACTIONS:
        groups: dict[tuple[str, ...], list[str]] = {}
        for prefix in _prefixes():
            roles = tuple(r for r in sorted(policy.roles) if policy.allows(r, action, prefix))
            groups.setdefault(roles, []).append(prefix)
        for roles, prefixes in sorted(groups.items()):
            statement = {"Sid": f"Deny{action.title()}Unless" + (
                             "".join(r.title() for r in roles) or "Nobody"),
                         "Effect": "Deny", "Principal": "*", "Action": S3_ACTIONS[action],
                         "Resource": [f"{base}{p}/*" for p in prefixes]}
            if roles:
                statement["Condition"] = {"StringNotEquals": {
                    f"aws:PrincipalTag/{ROLE_TAG}": list(roles)}}
            statements.append(statement)
    return {"Version": "2012-10-17", "Id": "robolake-lake-access", "Statement": statements}


def write_bucket_policy(out_dir: Path, bucket: str, root: str = "lake",
                        policy: Policy | None = None) -> Path:
    """deploy/iam/bucket-policy.json (regenerate after changing the policy file)."""
    policy = policy or load_policy()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / BUCKET_POLICY_FILE
    path.write_text(json.dumps(bucket_policy(policy, bucket, root), indent=1) + "\n")
    return path
