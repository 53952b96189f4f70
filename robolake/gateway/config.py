"""The gateway's settings, read from the environment in one place."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path


def state_dir() -> Path:
    """Where the gateway keeps its SQLite file (keys, uploads) and, on the embedded
    default, the JWT secret and the broker's storage: $ROBOLAKE_GATEWAY_STATE, else
    $DAGSTER_HOME/gateway, else ./.dagster_home/gateway."""
    explicit = os.environ.get("ROBOLAKE_GATEWAY_STATE")
    if explicit:
        path = Path(explicit)
    else:
        home = os.environ.get("DAGSTER_HOME") or str(Path.cwd() / ".dagster_home")
        path = Path(home) / "gateway"
    path.mkdir(parents=True, exist_ok=True)
    return path


def jwt_secret(directory: Path) -> bytes:
    """$ROBOLAKE_JWT_SECRET (production: a Kubernetes Secret), else a random secret made
    once in the state folder, readable by its owner only."""
    env = os.environ.get("ROBOLAKE_JWT_SECRET")
    if env:
        if len(env) < 32:
            raise ValueError("ROBOLAKE_JWT_SECRET is too short: expected at least 32 characters")
        return env.encode()
    path = directory / "jwt.secret"
    if not path.exists():
        tmp = directory / f".jwt.secret.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # first writer wins; a concurrent start-up reads its secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"{name}={text!r}: expected a number") from exc


@dataclass
class GatewaySettings:
    landing: str
    lake: str
    state: Path
    secret: bytes
    token_ttl_s: float = 900.0  # 15 minutes: a leaked token is worth little
    broker_url: str | None = None  # None: no streaming (tests of uploads alone)
    robot_rate: float = 10.0  # batches/s per robot
    tenant_rate: float = 1000.0  # batches/s per tenant
    max_batch_bytes: int = 1 << 20  # 1 MiB per streamed batch
    max_batch_readings: int = 10_000
    part_url_ttl_s: float = 3600.0  # presigned part URLs: 1 hour
    dagster_graphql_url: str | None = None
    dagster_location: str = "robolake"
    public_url: str | None = None  # base of the gateway's own part URLs behind an ingress
    webhook_poll_s: float = 30.0  # how often verdicts are looked for to notify tenants
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, broker_url: str | None = None) -> GatewaySettings:
        from robolake.settings import Settings

        lake_settings = Settings.from_env()  # read now: the gateway may start in any folder
        state = state_dir()
        return cls(
            landing=lake_settings.landing, lake=lake_settings.lake, state=state,
            secret=jwt_secret(state),
            token_ttl_s=_env_float("ROBOLAKE_TOKEN_TTL_S", 900.0),
            broker_url=broker_url or os.environ.get("ROBOLAKE_BROKER_URL") or None,
            robot_rate=_env_float("ROBOLAKE_RATE_ROBOT", 10.0),
            tenant_rate=_env_float("ROBOLAKE_RATE_TENANT", 1000.0),
            max_batch_bytes=int(_env_float("ROBOLAKE_MAX_BATCH_BYTES", 1 << 20)),
            dagster_graphql_url=os.environ.get("ROBOLAKE_DAGSTER_GRAPHQL") or None,
            dagster_location=os.environ.get("ROBOLAKE_DAGSTER_LOCATION", "robolake"),
            public_url=os.environ.get("ROBOLAKE_GATEWAY_PUBLIC_URL") or None,
            webhook_poll_s=_env_float("ROBOLAKE_WEBHOOK_POLL_S", 30.0),
        )
