"""The one Definitions object: a thin merge of the per-layer modules."""

from __future__ import annotations

import dagster as dg

from robolake.settings import ensure_env_defaults

ensure_env_defaults()  # laptop defaults for ROBOLAKE_* before EnvVar-based resources resolve

from resources.executors import robolake_executor  # noqa: E402
from resources.lake import storage_resources  # noqa: E402
from robolake_assets import cleaned, datasets, models, raw  # noqa: E402
from robolake_assets.jobs import INGEST_JOBS, PARTITIONED_LAYERS, build_datasets  # noqa: E402
from robolake_assets.maintenance import delta_maintenance, delta_maintenance_schedule  # noqa: E402
from sensors.run_status import failed_runs_sensor  # noqa: E402
from sensors.uploads import build_new_uploads_sensor  # noqa: E402

defs = dg.Definitions(
    assets=[raw.raw_uploads, cleaned.cleaned_layer, datasets.corner_case_scores,
            *datasets.DATASET_ASSETS, *models.MODEL_ASSETS],
    jobs=[*INGEST_JOBS.values(), build_datasets, *models.MODEL_JOBS, delta_maintenance],
    schedules=[delta_maintenance_schedule],
    sensors=[build_new_uploads_sensor(INGEST_JOBS[PARTITIONED_LAYERS[-1]]), failed_runs_sensor],
    resources=storage_resources(),
    executor=robolake_executor(),  # k8s_job_executor when ROBOLAKE_DEPLOYMENT=k8s
)
