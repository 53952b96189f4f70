"""Notebooks as assets (robolake/notebooks.py): one asset per notebook in the notebooks
folder (`ROBOLAKE_NOTEBOOKS`, default ./notebooks), a job per notebook and a schedule for
each entry of its `schedules.yaml`. A run's parameters are the asset's config
(`parameters`: the values for the notebook's parameters cell); its executed notebook,
HTML and figures are put into the lake and linked from the materialization.
"""

from pathlib import Path

import dagster as dg

from robolake import notebooks
from robolake_resources import pools
from robolake_resources.lake import LakeResource

GROUP = "notebooks"


def _asset_name(name: str) -> str:
    return f"notebook_{name}"


def build_notebook_asset(name: str, path: Path, pool: str) -> dg.AssetsDefinition:
    defaults = notebooks.notebook_parameters(path)

    @dg.asset(
        name=_asset_name(name),
        group_name=GROUP,
        deps=["cleaned_aligned_frames", "cleaned_quality_reports"],
        kinds={"jupyter", "polars"},
        description=f"Notebook {path.name}, run with papermill. Parameters: "
                    + ", ".join(f"{k} (default {v})" for k, v in defaults.items()),
        metadata={"notebook": dg.MetadataValue.path(str(path))},
        config_schema={"parameters": dg.Field(dg.Permissive(), default_value={},
                                              description="values for the parameters cell")},
        **pools.POOLS[pool].asset_kwargs(),
    )
    def _notebook(context: dg.AssetExecutionContext, lake: LakeResource):
        store = lake.store()
        parameters = dict(context.op_execution_context.op_config["parameters"])
        with pools.retry_only_transient():
            run = notebooks.run_notebook(path, parameters, store, context.run.run_id)
        html = store.table_uri(run.keys["html"])
        context.log.info(f"executed notebook: {html}")
        if run.error:
            raise dg.Failure(description=f"{path.name}: {run.error} (the executed notebook "
                                         f"up to that cell: {html})",
                             metadata={"html": dg.MetadataValue.path(html)},
                             allow_retries=False)
        return dg.MaterializeResult(metadata={
            "html": dg.MetadataValue.path(html),
            "executed_notebook": dg.MetadataValue.path(store.table_uri(run.keys["ipynb"])),
            "figures": len(run.figures),
            "parameters": dg.MetadataValue.json(parameters),
            **({"outputs": dg.MetadataValue.json(run.outputs)} if run.outputs else {}),
        })

    return _notebook


def build_notebook_layer(folder: Path) -> tuple[list, list, list]:
    """Assets, jobs and schedules for the notebooks in `folder`."""
    found, schedules = notebooks.load_notebooks(folder)
    assets, jobs, schedule_defs = [], [], []
    for name, path in found.items():
        schedule = schedules.get(name)
        assets.append(build_notebook_asset(name, path, schedule.pool if schedule else
                                           "cpu_spot"))
        job = dg.define_asset_job(f"{_asset_name(name)}_job",
                                  selection=dg.AssetSelection.assets(_asset_name(name)),
                                  tags=pools.queue_tags("batch"),
                                  description=f"Run notebook {path.name}")
        jobs.append(job)
        if schedule:
            config = {"ops": {_asset_name(name): {"config": {"parameters":
                                                             schedule.parameters}}}}
            schedule_defs.append(dg.ScheduleDefinition(
                name=f"{_asset_name(name)}_schedule", job=job, cron_schedule=schedule.cron,
                execution_timezone="UTC", run_config=config,
                description=f"{path.name} at {schedule.cron} UTC"))
    return assets, jobs, schedule_defs
