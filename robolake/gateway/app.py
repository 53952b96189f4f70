"""The gateway's FastAPI application: every request gets a verdict with a reason."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from robolake.gateway.auth import (
    Authenticated,
    Role,
    issue_token,
    unauthorized,
)
from robolake.gateway.config import GatewaySettings
from robolake.gateway.db import open_database
from robolake.gateway.keys import KeyStore

API = "/api/v1"


class Strict(BaseModel):
    """Request bodies refuse unknown fields (422 naming them)."""

    model_config = ConfigDict(extra="forbid")


class TokenRequest(Strict):
    api_key: str = Field(min_length=1, max_length=256, description="a key from "
                         "`robolake keys create`")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    tenant: str
    role: str
    robot_id: str | None


class WhoAmI(BaseModel):
    """A key's identity (keys.Principal without the key id)."""

    tenant: str
    role: str
    robot_id: str | None
    robot_type: str | None
    region: str | None


class KeyInfo(WhoAmI):
    key_id: str
    revoked: bool


def create_app(settings: GatewaySettings) -> FastAPI:
    # long only by its nested route handlers (each short); they close over the app's state
    db = open_database(settings.state)
    keys = KeyStore(db)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for start in app.state.on_start:
            await start()
        yield
        for stop in app.state.on_stop:
            await stop()

    app = FastAPI(title="Robolake gateway", version="1", lifespan=lifespan,
                  openapi_url=f"{API}/openapi.json", docs_url=f"{API}/docs", redoc_url=None,
                  description="Uploads, streaming and the platform API of a Robolake lake.")
    app.state.settings = settings
    app.state.keys = keys
    app.state.db = db
    app.state.on_start, app.state.on_stop = [], []

    @app.get(f"{API}/health", tags=["meta"])
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(f"{API}/auth/token", tags=["auth"], response_model=TokenResponse,
              responses={401: {"description": "unknown or revoked key"}})
    def token(body: TokenRequest) -> TokenResponse:
        record = keys.verify(body.api_key)
        if record is None:
            raise unauthorized("unknown or revoked API key")
        jwt_text, expires = issue_token(record, settings.secret, settings.token_ttl_s)
        return TokenResponse(access_token=jwt_text, expires_in=int(settings.token_ttl_s),
                             tenant=record.tenant, role=record.role, robot_id=record.robot_id)

    @app.get(f"{API}/auth/whoami", tags=["auth"], response_model=WhoAmI,
             responses={401: {"description": "missing, invalid, expired or revoked token"}})
    def whoami(principal: Authenticated) -> WhoAmI:
        return WhoAmI.model_validate(principal, from_attributes=True)

    @app.get(f"{API}/keys", tags=["auth"], response_model=list[KeyInfo],
             responses={401: {"description": "no valid token"},
                        403: {"description": "role may not list keys"}})
    def list_keys(principal: Role("auditor")) -> list[KeyInfo]:
        """The tenant's keys (never their secrets: only hashes are stored)."""
        return [KeyInfo.model_validate(r, from_attributes=True)
                for r in keys.list() if r.tenant == principal.tenant]

    @app.post(f"{API}/keys/{{key_id}}/revoke", tags=["auth"],
              responses={401: {"description": "no valid token"},
                         403: {"description": "only admins revoke keys"},
                         404: {"description": "no such key in the tenant"}})
    def revoke_key(key_id: str, principal: Role()) -> dict:
        record = keys.get(key_id)
        if record is None or record.tenant != principal.tenant:
            raise HTTPException(404, detail=f"no key {key_id!r} in tenant {principal.tenant!r}")
        keys.revoke(key_id)
        return {"key_id": key_id, "revoked": True}

    from robolake.gateway import routes
    from robolake.gateway.audit_middleware import install_audit

    routes.install(app, settings)
    from robolake.gateway import privacy_routes

    privacy_routes.install(app, settings.lake, settings.landing)  # GDPR erase (admins)
    from robolake.gateway import catalog_routes

    catalog_routes.install(app, settings.lake)  # filtered by configs/access_policy.yaml
    install_audit(app, settings.lake)  # every API call lands in ops/audit
    return app
