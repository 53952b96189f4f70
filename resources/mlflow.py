"""MLflow tracking and registry, chosen in one place.

With `MLFLOW_TRACKING_URI` set (read through `dagster.EnvVar`, so a URI holding
credentials never lands in config or metadata) training and evaluation log to
that server; unset, they use the embedded SQLite store under the lake
(`robolake.models.tracking`). The choice is passed on through the environment
because training may run in `torchrun` child processes.
"""

from __future__ import annotations

import os

import dagster as dg


class MlflowResource(dg.ConfigurableResource):
    """Where MLflow runs and registered models live ("" = embedded, under the lake)."""

    tracking_uri: str = ""

    def activate(self) -> None:
        """Point this process and the ones it starts at the configured server."""
        if self.tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = self.tracking_uri


def mlflow_resource() -> MlflowResource:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return MlflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"))
    return MlflowResource()
