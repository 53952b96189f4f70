"""The platform API: dataset builds and training jobs launched through Dagster's GraphQL
HTTP API (plain requests: the gateway never imports dagster), and their runs read back.

Shapes (dagster-graphql 1.13): `launchRun(executionParams: ExecutionParams!)` answers a
`LaunchRunResult` union (`LaunchRunSuccess { run }` or an error type; every error
implements the `Error` interface with a message, `RunConfigValidationInvalid` lists
`errors`); `runOrError(runId: ID!)` answers `Run` (status, timestamps, tags,
`assetMaterializations`) or `RunNotFoundError` / `PythonError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

REPOSITORY = "__repository__"  # the name Dagster gives a code location's one Definitions

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status jobName } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

RUN_OR_ERROR = """
query RunOrError($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      runId
      jobName
      status
      startTime
      endTime
      tags { key value }
      assetSelection { path }
      assetMaterializations { assetKey { path } partition timestamp stepKey }
    }
    ... on Error { message }
  }
}
"""


class PlatformError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class DagsterGraphQL:
    url: str  # e.g. http://dagster-webserver:3000/graphql
    location: str = "robolake"
    timeout_s: float = 20.0

    async def _post(self, query: str, variables: dict) -> dict:
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                r = await client.post(self.url, json={"query": query, "variables": variables})
        except httpx.HTTPError as exc:
            raise PlatformError(503, f"Dagster is unreachable at {self.url} "
                                     f"({type(exc).__name__})") from exc
        if r.status_code != 200:
            raise PlatformError(502, f"Dagster answered HTTP {r.status_code}")
        body = r.json()
        if body.get("errors"):
            raise PlatformError(502, "Dagster refused the GraphQL request: "
                                     + "; ".join(e.get("message", "") for e in body["errors"]))
        return body["data"]

    async def launch(self, job_name: str, tags: dict[str, str],
                     asset_paths: list[list[str]] | None = None) -> dict:
        selector: dict = {"repositoryLocationName": self.location,
                          "repositoryName": REPOSITORY, "jobName": job_name}
        if asset_paths:
            selector["assetSelection"] = [{"path": p} for p in asset_paths]
        params = {"selector": selector, "runConfigData": {},
                  "executionMetadata": {"tags": [{"key": k, "value": v}
                                                 for k, v in sorted(tags.items())]}}
        result = (await self._post(LAUNCH_RUN, {"executionParams": params}))["launchRun"]
        kind = result["__typename"]
        if kind == "LaunchRunSuccess":
            return result["run"]
        if kind == "RunConfigValidationInvalid":
            reason = "; ".join(e["message"] for e in result.get("errors", []))
        else:
            reason = result.get("message", "")
        status = 404 if kind in ("PipelineNotFoundError", "InvalidSubsetError") else 502
        raise PlatformError(status, f"Dagster did not launch {job_name}: {kind}: {reason}")

    async def run(self, run_id: str) -> dict:
        result = (await self._post(RUN_OR_ERROR, {"runId": run_id}))["runOrError"]
        if result["__typename"] == "Run":
            return result
        if result["__typename"] == "RunNotFoundError":
            raise PlatformError(404, f"no run {run_id!r}")
        raise PlatformError(502, f"Dagster: {result.get('message', result['__typename'])}")


def find_spec(specs_dir: Path, name: str):
    """The dataset spec named `name` in the specs folder (the Dagster code location builds
    one asset per spec file there)."""
    from robolake.datasets.spec import load_spec

    for path in sorted(specs_dir.glob("*.y*ml")) if specs_dir.is_dir() else []:
        spec = load_spec(path)
        if spec.name == name:
            return spec
    return None


def find_training_config(configs_dir: Path, name: str):
    from robolake.models.config import load_config

    for path in sorted(configs_dir.glob("*.y*ml")) if configs_dir.is_dir() else []:
        config = load_config(path)
        if config.name == name:
            return config
    return None


def training_job_name(config_name: str) -> str:
    # as robolake_assets/models.py names the job of a training config
    return f"train_{config_name.replace('-', '_')}"
