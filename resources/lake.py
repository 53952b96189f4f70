"""Storage resources: the landing zone and the lake, a folder or an S3 prefix.

Which one is chosen by ROBOLAKE_LANDING / ROBOLAKE_LAKE (`robolake.settings`):
set, they are read through `dagster.EnvVar`; unset, the resources take the
settings' laptop defaults. An S3 prefix is reached through dagster-aws's
`S3Resource` (its boto3 client, with Dagster's retry configuration); endpoint
and region come from AWS_ENDPOINT_URL / AWS_REGION, credentials from boto3's
default chain (AWS_* variables, an instance or pod role), so none appears in
config or metadata.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_aws.s3 import S3Resource

from robolake.settings import Settings, get_settings
from robolake.storage import Store, open_store


def _store(uri: str, s3: S3Resource | None) -> Store:
    if not uri.startswith("s3://"):
        return open_store(uri)
    return open_store(uri, s3_client=(s3 or s3_resource()).get_client())


class LakeResource(dg.ConfigurableResource):
    """The lake root: Delta tables and copied files live under it."""

    root: str
    s3: S3Resource | None = None  # unset: an S3Resource from the AWS variables

    def store(self) -> Store:
        return _store(self.root, self.s3)


class LandingResource(dg.ConfigurableResource):
    """Where robots upload recordings; read-only for Robolake."""

    uri: str
    s3: S3Resource | None = None

    def store(self) -> Store:
        return _store(self.uri, self.s3)


def s3_resource() -> S3Resource:
    """dagster-aws's S3 resource: AWS_ENDPOINT_URL and AWS_REGION through EnvVar when set
    (else boto3's defaults); credentials never in config."""
    fields = {name: dg.EnvVar(var) for name, var in (("endpoint_url", "AWS_ENDPOINT_URL"),
                                                     ("region_name", "AWS_REGION"))
              if os.environ.get(var)}
    return S3Resource(**fields)


def storage_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    from robolake_resources.mlflow import mlflow_resource

    settings = settings or get_settings()
    s3 = s3_resource()
    return {
        "lake": LakeResource(root=settings.resource_value("lake"), s3=s3),
        "landing": LandingResource(uri=settings.resource_value("landing"), s3=s3),
        "mlflow": mlflow_resource(),
    }
