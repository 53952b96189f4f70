"""`/api/v1/tenants/webhook`: where a tenant's upload verdicts are POSTed."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from robolake.gateway.auth import Role
from robolake.gateway.webhooks import Webhooks

API = "/api/v1"


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s]{1,2000}$", description="http(s) URL to POST "
                     "each upload's verdict to")


class WebhookSet(BaseModel):
    tenant: str
    url: str
    signing_secret: str = Field(description="shown once: verify X-Robolake-Signature "
                                            "(sha256=HMAC-SHA256 of the body) with it")


class WebhookInfo(BaseModel):
    tenant: str
    url: str | None


def install(app: FastAPI, webhooks: Webhooks) -> None:
    responses = {401: {"description": "no valid token"},
                 403: {"description": "only admins set webhooks"},
                 422: {"description": "a field is wrong (named in detail)"}}

    @app.put(f"{API}/tenants/webhook", tags=["auth"], response_model=WebhookSet,
             responses=responses)
    def set_webhook(body: WebhookRequest, principal: Role()):
        """Set the tenant's webhook (replacing any); uploads completed from now on are
        notified of their verdict."""
        secret = webhooks.set(principal.tenant, body.url)
        return WebhookSet(tenant=principal.tenant, url=body.url, signing_secret=secret)

    @app.get(f"{API}/tenants/webhook", tags=["auth"], response_model=WebhookInfo,
             responses=responses)
    def get_webhook(principal: Role("auditor")):
        return WebhookInfo(tenant=principal.tenant, url=webhooks.get(principal.tenant))

    @app.delete(f"{API}/tenants/webhook", tags=["auth"], status_code=204,
                responses={**responses, 404: {"description": "no webhook set"}})
    def remove_webhook(principal: Role()):
        if not webhooks.remove(principal.tenant):
            raise HTTPException(404, detail=f"tenant {principal.tenant!r} has no webhook")
