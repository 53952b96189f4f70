"""POST /api/v1/runs/{run_id}/approve: an admin approves a queued run that a budget or the
expensive-GPU rule holds (as `robolake runs approve`, through the same
robolake.costs.approvals.approve). The run is read through Dagster's GraphQL API; the
approval is recorded in ops/approvals and in the audit log as the admin's key, and the
budget sensor tags the run at its next tick (GraphQL cannot tag a run), so the queue
starts it."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from robolake.gateway.auth import Role
from robolake.gateway.platform import DagsterGraphQL, PlatformError
from robolake.gateway.platform_routes import API, _refusal


class Approved(BaseModel):
    run_id: str
    job_name: str
    approved_by: str
    held: str
    new: bool
    detail: str


_ERRORS = {401: {"description": "no valid token"}, 403: {"description": "only admins approve"},
           404: {"description": "no such run"},
           409: {"description": "the run is not queued (nothing to approve)"},
           502: {"description": "Dagster refused"},
           503: {"description": "Dagster unreachable or not configured; see Retry-After"}}


def install(app: FastAPI, dagster_url: str | None, location: str, lake_uri: str) -> None:
    client = DagsterGraphQL(dagster_url, location) if dagster_url else None

    @app.post(f"{API}/runs/{{run_id}}/approve", tags=["platform"], response_model=Approved,
              responses=_ERRORS)
    async def approve_run(run_id: Annotated[str, PathParam(pattern=r"^[0-9a-f\-]{8,64}$")],
                          principal: Role()):
        """Approve a queued run held by a budget or for expensive GPU work (admins only)."""
        from robolake.costs import approvals
        from robolake.governance import audit
        from robolake.storage import open_store

        try:
            if client is None:
                raise PlatformError(503, "the platform API is not configured on this gateway "
                                         "(set ROBOLAKE_DAGSTER_GRAPHQL)")
            run = await client.run(run_id)
        except PlatformError as exc:
            return _refusal(exc)
        view = approvals.RunView(run["runId"], run["jobName"], run["status"],
                                 {t["key"]: t["value"] for t in run["tags"]})
        actor = audit.Actor(f"key:{principal.key_id}", principal.role)
        try:
            done = await run_in_threadpool(approvals.approve, open_store(lake_uri), view, actor)
        except approvals.ApprovalError as exc:
            return _refusal(PlatformError(409, str(exc)))
        return Approved(run_id=done.run_id, job_name=done.job_name,
                        approved_by=done.approved_by, held=done.held, new=done.new,
                        detail=done.message() + "; the budget sensor releases it at its next "
                                                "tick")
