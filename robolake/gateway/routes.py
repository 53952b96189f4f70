"""The gateway's endpoints beyond auth, installed on the app by capability."""

from __future__ import annotations

from fastapi import FastAPI

from robolake.gateway.config import GatewaySettings


def install(app: FastAPI, settings: GatewaySettings) -> None:
    from robolake.gateway import upload_routes
    from robolake.gateway.uploads import Uploads

    uploads = Uploads(app.state.db, settings.landing, settings.secret, settings.part_url_ttl_s)
    app.state.uploads = uploads
    upload_routes.install(app, uploads, settings.lake, settings.public_url)

    from robolake.gateway import stream_routes

    broker = None
    if settings.broker_url:
        import os

        from robolake.gateway.broker import NatsBroker

        broker = NatsBroker(settings.broker_url,
                            replicas=int(os.environ.get("ROBOLAKE_STREAM_REPLICAS", "1")))
        app.state.on_start.append(broker.start)
        app.state.on_stop.append(broker.close)
    app.state.broker = broker
    stream_routes.install(app, broker, settings.max_batch_bytes, settings.robot_rate,
                          settings.tenant_rate)

    from robolake.gateway import platform_routes

    platform_routes.install(app, settings.dagster_graphql_url, settings.dagster_location)
    from robolake.gateway import approval_routes

    approval_routes.install(app, settings.dagster_graphql_url, settings.dagster_location,
                            settings.lake)  # admins approve held runs

    from robolake.gateway import webhook_routes
    from robolake.gateway.webhooks import Webhooks

    webhooks = Webhooks(app.state.db, uploads, settings.lake, settings.webhook_poll_s)
    app.state.webhooks = webhooks
    app.state.on_start.append(webhooks.start)
    app.state.on_stop.append(webhooks.stop)
    webhook_routes.install(app, webhooks)
