"""The gateway's endpoints beyond auth, installed on the app by capability."""

from __future__ import annotations

from fastapi import FastAPI

from robolake.gateway.config import GatewaySettings


def install(app: FastAPI, settings: GatewaySettings) -> None:
    return None
