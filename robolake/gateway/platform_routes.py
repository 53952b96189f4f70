"""`/api/v1/datasets/builds`, `/api/v1/training/jobs`, `/api/v1/runs/{id}`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from robolake.gateway.auth import Principal, Role
from robolake.gateway.platform import (
    DagsterGraphQL,
    PlatformError,
    find_spec,
    find_training_config,
    training_job_name,
)

API = "/api/v1"
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$")]
DAGSTER_RETRY_AFTER_S = "10"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetBuild(Strict):
    name: Name
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$", description="the spec's version (semver)")


class TrainingJob(Strict):
    config: Name = Field(description="a training config's name")


class Launched(BaseModel):
    run_id: str
    job_name: str
    status: str


class Materialization(BaseModel):
    asset_key: list[str]
    partition: str | None
    timestamp: str | None
    step_key: str | None


class RunStatus(BaseModel):
    run_id: str
    job_name: str
    status: str
    start_time: float | None
    end_time: float | None
    tags: dict[str, str]
    asset_selection: list[list[str]]
    materializations: list[Materialization]


_ERRORS = {401: {"description": "no valid token"}, 403: {"description": "role may not"},
           404: {"description": "unknown spec, config or run"},
           409: {"description": "spec is at another version"},
           422: {"description": "a field is wrong (named in detail)"},
           502: {"description": "Dagster refused"},
           503: {"description": "Dagster unreachable or not configured; see Retry-After"}}


def _refusal(exc: PlatformError) -> JSONResponse:
    headers = {"Retry-After": DAGSTER_RETRY_AFTER_S} if exc.status == 503 else None
    return JSONResponse({"detail": exc.reason}, status_code=exc.status, headers=headers)


def _tags(p: Principal, **extra: str) -> dict[str, str]:
    return {"robolake/trigger": "gateway", "robolake/requested-by": f"{p.tenant}/{p.key_id}",
            **extra}


def install(app: FastAPI, dagster_url: str | None, location: str) -> None:
    # long only by its nested route handlers (each short); they close over the app's state
    client = DagsterGraphQL(dagster_url, location) if dagster_url else None

    def dagster() -> DagsterGraphQL:
        if client is None:
            raise PlatformError(503, "the platform API is not configured on this gateway "
                                     "(set ROBOLAKE_DAGSTER_GRAPHQL)")
        return client

    def specs_dir() -> Path:
        return Path(os.environ.get("ROBOLAKE_SPECS") or "specs")

    def configs_dir() -> Path:
        return Path(os.environ.get("ROBOLAKE_TRAINING_CONFIGS") or "configs/training")

    @app.post(f"{API}/datasets/builds", tags=["platform"], status_code=202,
              response_model=Launched, responses=_ERRORS)
    async def build_dataset(body: DatasetBuild, principal: Role("engineer")):
        """Launch the build of a dataset spec's version (the `build_datasets` job, this
        dataset's asset only). Versions are immutable: the spec must declare this version."""
        try:
            spec = find_spec(specs_dir(), body.name)
            if spec is None:
                raise PlatformError(404, f"no dataset spec named {body.name!r} in "
                                         f"{specs_dir()}")
            if spec.version != body.version:
                raise PlatformError(409, f"spec {body.name!r} declares version {spec.version}, "
                                         f"not {body.version}: a version is built from the spec "
                                         "that declares it")
            run = await dagster().launch("build_datasets", _tags(
                principal, **{"robolake/dataset": f"{body.name}@{body.version}"}),
                asset_paths=[["datasets", body.name]])
        except PlatformError as exc:
            return _refusal(exc)
        return Launched(run_id=run["runId"], job_name=run["jobName"], status=run["status"])

    @app.post(f"{API}/training/jobs", tags=["platform"], status_code=202,
              response_model=Launched, responses=_ERRORS)
    async def start_training(body: TrainingJob, principal: Role("engineer")):
        """Launch a training config's job (train, register, evaluate, maybe promote)."""
        try:
            config = find_training_config(configs_dir(), body.config)
            if config is None:
                raise PlatformError(404, f"no training config named {body.config!r} in "
                                         f"{configs_dir()}")
            # model assets are partitioned by the dataset version they train on
            version = config.dataset.version
            run = await dagster().launch(training_job_name(body.config), _tags(
                principal, **{"robolake/training-config": body.config,
                              "dagster/partition": version}))
        except PlatformError as exc:
            return _refusal(exc)
        return Launched(run_id=run["runId"], job_name=run["jobName"], status=run["status"])

    @app.get(f"{API}/runs/{{run_id}}", tags=["platform"], response_model=RunStatus,
             responses=_ERRORS)
    async def run_status(run_id: Annotated[str, PathParam(pattern=r"^[0-9a-f\-]{8,64}$")],
                         principal: Role("engineer", "auditor")):
        """A run's status and the assets it materialized."""
        try:
            run = await dagster().run(run_id)
        except PlatformError as exc:
            return _refusal(exc)
        tags = {t["key"]: t["value"] for t in run["tags"]}
        if tags.get("robolake/requested-by", "").split("/")[0] != principal.tenant \
                and principal.role != "admin" and "robolake/requested-by" in tags:
            return _refusal(PlatformError(404, f"no run {run_id!r}"))
        return RunStatus(
            run_id=run["runId"], job_name=run["jobName"], status=run["status"],
            start_time=run.get("startTime"), end_time=run.get("endTime"), tags=tags,
            asset_selection=[a["path"] for a in run.get("assetSelection") or []],
            materializations=[Materialization(
                asset_key=m["assetKey"]["path"], partition=m.get("partition"),
                timestamp=m.get("timestamp"), step_key=m.get("stepKey"))
                for m in run["assetMaterializations"]])
