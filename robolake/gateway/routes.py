"""The gateway's endpoints beyond auth, installed on the app by capability."""

from __future__ import annotations

from fastapi import FastAPI

from robolake.gateway.config import GatewaySettings


def install(app: FastAPI, settings: GatewaySettings) -> None:
    from robolake.gateway import upload_routes
    from robolake.gateway.uploads import Uploads

    uploads = Uploads(settings.state / "gateway.db", settings.landing, settings.secret,
                      settings.part_url_ttl_s)
    app.state.uploads = uploads
    upload_routes.install(app, uploads, settings.lake)
