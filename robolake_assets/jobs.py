"""Jobs that run the layers in order, for the sensor, the CLI and the UI."""

from __future__ import annotations

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from robolake.costs.budgets import job_owner_tags
from robolake.layers import LAYERS, PARTITIONED_LAYERS
from robolake_resources import pools

FRESHNESS_CHECK = dg.AssetCheckKey(dg.AssetKey("cleaned_quality_reports"), "freshness")

__all__ = ["LAYERS", "PARTITIONED_LAYERS", "INGEST_JOBS", "build_datasets", "ingest_job_name"]


def ingest_job_name(through: str) -> str:
    return f"ingest_through_{through}"


def ingest_job(through: str) -> UnresolvedAssetJobDefinition:
    if through not in PARTITIONED_LAYERS:
        raise ValueError(f"unknown layer {through!r}; expected one of "
                         f"{', '.join(PARTITIONED_LAYERS)}")
    groups = LAYERS[: LAYERS.index(through) + 1]
    return dg.define_asset_job(
        ingest_job_name(through),
        # the freshness SLA looks at the whole landing zone: its own schedule, not every run
        selection=dg.AssetSelection.groups(*groups) - dg.AssetSelection.checks(FRESHNESS_CHECK),
        tags={**pools.queue_tags("etl"), **job_owner_tags(ingest_job_name(through))},
        description=f"Ingest one (date, robot type) partition through the {through} layer.",
    )


INGEST_JOBS = {layer: ingest_job(layer) for layer in PARTITIONED_LAYERS}

build_datasets = dg.define_asset_job(
    "build_datasets",
    selection=dg.AssetSelection.groups("datasets"),
    tags={**pools.queue_tags("batch"), **job_owner_tags("build_datasets")},
    description="Build every dataset spec's version from the cleaned tables and corner-case "
                "scores (a version that exists with the same spec and inputs is kept).",
)
