"""Storage resources: the landing zone and the lake, a folder or an S3 prefix.

Which one is chosen by ROBOLAKE_LANDING / ROBOLAKE_LAKE (read through
`dagster.EnvVar`); S3 endpoint and credentials come from the standard AWS_*
variables and never appear in config or metadata.
"""

from __future__ import annotations

import dagster as dg

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


def storage_resources() -> dict[str, dg.ConfigurableResource]:
    from resources.mlflow import mlflow_resource

    return {
        "lake": LakeResource(root=dg.EnvVar("ROBOLAKE_LAKE")),
        "landing": LandingResource(uri=dg.EnvVar("ROBOLAKE_LANDING")),
        "mlflow": mlflow_resource(),
    }
