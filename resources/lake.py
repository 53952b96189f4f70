"""Storage resources: the landing zone and the lake, a folder or an S3 prefix.

Which one is chosen by ROBOLAKE_LANDING / ROBOLAKE_LAKE (`robolake.settings`):
set, they are read through `dagster.EnvVar`; unset, the resources take the
settings' laptop defaults. S3 endpoint and credentials come from the standard
AWS_* variables and never appear in config or metadata.
"""

from __future__ import annotations

import dagster as dg

from robolake.settings import Settings, get_settings
from robolake.storage import Store, open_store


class LakeResource(dg.ConfigurableResource):
    """The lake root: Delta tables and copied files live under it."""

    root: str

    def store(self) -> Store:
        return open_store(self.root)


class LandingResource(dg.ConfigurableResource):
    """Where robots upload recordings; read-only for Robolake."""

    uri: str

    def store(self) -> Store:
        return open_store(self.uri)


def storage_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    from robolake_resources.mlflow import mlflow_resource

    settings = settings or get_settings()
    return {
        "lake": LakeResource(root=settings.resource_value("lake")),
        "landing": LandingResource(uri=settings.resource_value("landing")),
        "mlflow": mlflow_resource(),
    }
