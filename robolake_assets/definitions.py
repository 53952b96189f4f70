"""The one Definitions object: a thin merge of the per-layer modules.

`build_definitions(settings)` assembles it for a `robolake.settings.Settings`
(the CLI passes its own, with its flags applied); `defs`, what Dagster loads,
is built from this process's settings. Importing this module writes nothing.
"""

from __future__ import annotations

import dagster as dg

from robolake.settings import Settings, get_settings
from robolake_assets import (
    annotations,
    backups,
    cleaned,
    costs,
    datasets,
    features,
    models,
    notebooks,
    raw,
)
from robolake_assets.automation import automation_sensor
from robolake_assets.freshness import cleaned_freshness, freshness_job, freshness_schedule
from robolake_assets.jobs import INGEST_JOBS, build_datasets
from robolake_assets.maintenance import (
    delta_maintenance,
    delta_maintenance_schedule,
    storage_tiering,
    storage_tiering_schedule,
)
from robolake_resources.executors import robolake_executor
from robolake_resources.lake import storage_resources
from robolake_sensors.budgets import budget_sensor
from robolake_sensors.costs import run_costs_sensor
from robolake_sensors.notifications import notify_failed_checks, notify_failed_runs
from robolake_sensors.run_status import failed_runs_sensor
from robolake_sensors.uploads import build_new_uploads_sensor


def build_definitions(settings: Settings) -> dg.Definitions:
    model_assets, model_jobs = models.build_models_layer(settings.training_configs_dir,
                                                           settings.specs_dir)
    nb_assets, nb_jobs, nb_schedules = notebooks.build_notebook_layer(settings.notebooks_dir)
    return dg.Definitions(
        assets=[raw.raw_uploads, cleaned.cleaned_layer, features.corner_case_scores,
                annotations.annotation_queue,
                *datasets.build_dataset_assets(settings.specs_dir), *model_assets, *nb_assets,
                costs.ops_costs],
        asset_checks=[cleaned_freshness],
        jobs=[*INGEST_JOBS.values(), build_datasets, *model_jobs, delta_maintenance,
              storage_tiering, backups.instance_backup, freshness_job, costs.ops_costs_job,
              *nb_jobs],
        schedules=[delta_maintenance_schedule, storage_tiering_schedule, freshness_schedule,
                   costs.ops_costs_schedule, backups.instance_backup_schedule(settings.deployment),
                   *nb_schedules],
        # new uploads run through the cleaned layer; eager automation scores features after
        sensors=[build_new_uploads_sensor(INGEST_JOBS["cleaned"]), failed_runs_sensor,
                 automation_sensor, notify_failed_runs, notify_failed_checks,
                 run_costs_sensor, budget_sensor],
        resources=storage_resources(settings),
        executor=robolake_executor(settings.deployment),  # k8s_job_executor on k8s
    )


defs = build_definitions(get_settings())
