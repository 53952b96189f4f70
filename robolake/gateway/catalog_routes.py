"""GET /api/v1/catalog/search: the catalog search (robolake.governance.search) through the
gateway, showing a key only what its role may read under configs/access_policy.yaml."""

from __future__ import annotations

from fastapi import FastAPI, Query
from fastapi.concurrency import run_in_threadpool

from robolake.gateway.auth import Authenticated


def _layer(hit) -> str:
    from robolake.governance import catalog

    if hit.kind in ("dataset_version", "model_version"):
        return "datasets" if hit.kind == "dataset_version" else "models"
    key = hit.name.rstrip("/") if hit.kind != "column" else hit.name.rpartition(".")[0]
    found = catalog.TABLES.get(key) or catalog.FILE_AREAS.get(key)
    return found.layer if found else "ops"


def install(app: FastAPI, lake_uri: str) -> None:
    from robolake.governance.policy import load_policy

    policy = load_policy()

    @app.get("/api/v1/catalog/search", tags=["catalog"],
             responses={401: {"description": "no valid token"}})
    async def catalog_search(principal: Authenticated,
                             q: str = Query(min_length=1, max_length=200)) -> list[dict]:
        from robolake.governance.search import search
        from robolake.storage import open_store

        hits = await run_in_threadpool(search, open_store(lake_uri), q)
        return [h.__dict__ for h in hits
                if policy.allows_level(principal.role, "read", _layer(h), h.classification)]
