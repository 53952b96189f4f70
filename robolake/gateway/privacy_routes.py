"""POST /api/v1/privacy/erase: the GDPR erase of one robot's data (admins only; see
robolake.governance.erase). The receipt is the answer; the erase is audited as the key."""

from __future__ import annotations

from datetime import date

from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from robolake.gateway.auth import Role


class EraseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    robot_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(min_length=1, max_length=2000, description="legal basis, kept")
    date_from: date | None = Field(None, alias="from")
    date_to: date | None = Field(None, alias="to")
    purge_now: bool = Field(False, description="vacuum the touched tables at once")


def install(app: FastAPI, lake_uri: str, landing_uri: str) -> None:
    @app.post("/api/v1/privacy/erase", tags=["privacy"],
              responses={401: {"description": "no valid token"},
                         403: {"description": "only admins erase"},
                         422: {"description": "bad request (names the field)"}})
    async def erase(body: EraseRequest, principal: Role()) -> dict:
        from robolake.governance import audit
        from robolake.governance.erase import erase_robot
        from robolake.storage import open_store

        def run() -> dict:
            who = audit.Actor(f"key:{principal.key_id}", principal.role)
            with audit.acting_as(who):
                receipt = erase_robot(
                    open_store(lake_uri), body.robot_id, body.reason,
                    str(body.date_from) if body.date_from else None,
                    str(body.date_to) if body.date_to else None,
                    landing=open_store(landing_uri), purge_now=body.purge_now)
            return receipt.__dict__

        try:
            return await run_in_threadpool(run)
        except ValueError as exc:
            raise HTTPException(422, detail=str(exc)) from None
