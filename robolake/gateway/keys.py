"""API keys: created once, shown once, stored hashed, revocable.

A key reads `rlk_<key id>_<secret>`. The key id (public) finds the row; the secret is 256
random bits, stored only as its SHA-256 (a slow password hash adds nothing for a secret
this long) and compared in constant time. Roles: `robot` (uploads and streams as its own
robot), `engineer` (platform API: builds, training, runs), `auditor` (reads), `admin`
(everything).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from robolake.gateway.db import Database
from robolake.raw import identity_problem

ROLES = ("robot", "engineer", "admin", "auditor")
KEY_PREFIX = "rlk_"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    robot_id TEXT,
    robot_type TEXT,
    region TEXT,
    created_ns BIGINT NOT NULL,
    revoked_ns BIGINT
);
"""


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for: its key and that key's identity."""

    key_id: str
    tenant: str
    role: str
    robot_id: str | None
    robot_type: str | None
    region: str | None

    @property
    def identity(self) -> dict[str, str]:
        """The robot identity uploads carry (robot keys always have one)."""
        return {"robot_id": self.robot_id or "", "robot_type": self.robot_type or "",
                "region": self.region or ""}


@dataclass(frozen=True)
class KeyRecord(Principal):
    """A stored key: its principal, and when it was created and revoked."""

    created_ns: int
    revoked_ns: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_ns is not None

    def principal(self) -> Principal:
        return Principal(self.key_id, self.tenant, self.role, self.robot_id,
                         self.robot_type, self.region)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, db: Database | Path | str):
        self.db = db if isinstance(db, Database) else Database(db)
        self.db.create(_SCHEMA)

    def create(self, tenant: str, role: str, robot_id: str | None = None,
               robot_type: str | None = None, region: str | None = None) -> tuple[str, KeyRecord]:
        """A new key: (the key, shown to the caller once, its record). Errors name the field."""
        if role not in ROLES:
            raise ValueError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
        if not tenant or identity_problem({"robot_id": tenant, "robot_type": "x",
                                           "region": "x"}, "--tenant"):
            raise ValueError(f"--tenant {tenant!r}: expected a printable name")
        if role == "robot" or robot_id is not None:
            given = {"--robot": robot_id, "--robot-type": robot_type, "--region": region}
            missing = [flag for flag, value in given.items() if not value]
            if missing:
                raise ValueError(f"a {role} key needs {', '.join(missing)} (the identity its "
                                 "uploads carry)")
            problem = identity_problem({"robot_id": robot_id, "robot_type": robot_type,
                                        "region": region}, "the key's robot")
            if problem:
                raise ValueError(problem)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = KeyRecord(key_id, tenant, role, robot_id, robot_type, region,
                           time.time_ns(), None)
        self.db.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (key_id, _hash(secret), tenant, role, robot_id, robot_type, region,
             record.created_ns))
        return f"{KEY_PREFIX}{key_id}_{secret}", record

    def get(self, key_id: str) -> KeyRecord | None:
        row = self.db.one(
            "SELECT key_id, tenant, role, robot_id, robot_type, region, created_ns, revoked_ns "
            "FROM api_keys WHERE key_id = ?", (key_id,))
        return KeyRecord(*row) if row else None

    def verify(self, api_key: str) -> KeyRecord | None:
        """The key's record if the key is known, its secret matches and it is not revoked."""
        if not api_key.startswith(KEY_PREFIX) or api_key.count("_") < 2:
            return None
        key_id, _, secret = api_key[len(KEY_PREFIX):].partition("_")
        row = self.db.one("SELECT secret_sha256 FROM api_keys WHERE key_id = ?", (key_id,))
        if row is None or not hmac.compare_digest(row[0], _hash(secret)):
            return None
        record = self.get(key_id)
        return None if record is None or record.revoked else record

    def revoke(self, key_id: str) -> bool:
        _, count = self.db.execute(
            "UPDATE api_keys SET revoked_ns = ? WHERE key_id = ? AND revoked_ns IS NULL",
            (time.time_ns(), key_id))
        return count == 1

    def list(self) -> list[KeyRecord]:
        rows, _ = self.db.execute(
            "SELECT key_id, tenant, role, robot_id, robot_type, region, created_ns, revoked_ns "
            "FROM api_keys ORDER BY created_ns")
        return [KeyRecord(*r) for r in rows]
