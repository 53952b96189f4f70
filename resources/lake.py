"""Storage resources: the landing zone and the lake, a folder or an S3 prefix.

Which one is chosen by ROBOLAKE_LANDING / ROBOLAKE_LAKE (`robolake.settings`):
set, they are read through `dagster.EnvVar`; unset, the resources take the
settings' laptop defaults. An S3 prefix is reached through the boto3 client of
dagster-aws's `S3Resource` (Dagster's retry configuration); endpoint and region
come from AWS_ENDPOINT_URL / AWS_REGION, credentials from boto3's default chain
(AWS_* variables, an instance or pod role), so none appears in config or
metadata. The S3 settings are plain fields rather than a nested resource: a
nested resource turns these into context-managed resources, which every
`build_*_context(resources=…)` caller would then have to open with `with`.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import PrivateAttr

from robolake.governance.audit import Actor
from robolake.settings import ENV_VARS, Settings, get_settings
from robolake.storage import Store, open_store


def resource_value(settings: Settings, name: str):
    """A resource field's value: `dagster.EnvVar` when the environment gave it (Dagster
    reads it in the process that runs the step, and shows only its name), the value
    itself otherwise (a default or a CLI flag)."""
    if name in settings.env_fields:
        return dg.EnvVar(ENV_VARS[name])
    return str(getattr(settings, name))

class _StoreResource(dg.ConfigurableResource):
    # unset: boto3 reads AWS_ENDPOINT_URL / AWS_DEFAULT_REGION itself
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def _open(self, uri: str) -> Store:
        if not uri.startswith("s3://"):
            return open_store(uri)
        s3 = S3Resource(endpoint_url=self.s3_endpoint_url, region_name=self.s3_region)
        return open_store(uri, s3_client=s3.get_client())


class LakeResource(_StoreResource):
    """The lake root: Delta tables and copied files live under it."""

    root: str
    _actor: Actor | None = PrivateAttr(default=None)

    def store(self) -> Store:
        store = self._open(self.root)
        store.audit_actor = getattr(self, "_actor", None)  # see setup_for_execution
        return store

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # what this run writes is audited as the run (robolake.governance.audit); only
        # setup, no teardown: a teardown would make every caller open the resource with `with`
        run = context.run
        self._actor = None if run is None else Actor(
            f"run:{run.run_id}", "run", partition=run.tags.get("dagster/partition", ""))


class LandingResource(_StoreResource):
    """Where robots upload recordings; read-only for Robolake."""

    uri: str

    def store(self) -> Store:
        return self._open(self.uri)


def s3_fields() -> dict[str, dg.EnvVar]:
    """The S3 endpoint and region, through EnvVar when set; credentials never in config."""
    return {name: dg.EnvVar(var) for name, var in (("s3_endpoint_url", "AWS_ENDPOINT_URL"),
                                                   ("s3_region", "AWS_REGION"))
            if os.environ.get(var)}


def storage_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    from robolake_resources.mlflow import mlflow_resource
    from robolake_resources.spark import engine_resources

    settings = settings or get_settings()
    return {
        "lake": LakeResource(root=resource_value(settings, "lake"), **s3_fields()),
        "landing": LandingResource(uri=resource_value(settings, "landing"), **s3_fields()),
        "mlflow": mlflow_resource(),
        **engine_resources(settings),
    }
