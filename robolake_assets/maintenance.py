"""Nightly Delta maintenance: compact (cleaned tables: Z-order by robot_id, ts_ns) and
vacuum every table in the lake.

The rules (table discovery, the retention that protects writes in flight)
live in `robolake.maintenance`; this module only schedules them. The job runs
in the batch queue (lowest priority, capped), on on-demand CPU: a vacuum is
safe to repeat, but there is no point paying a Spot interruption for it.
"""


import dagster as dg

from robolake import maintenance
from robolake.costs.budgets import job_owner_tags
from robolake_assets.helpers import markdown_table
from robolake_resources import pools
from robolake_resources.lake import LakeResource


class MaintenanceConfig(dg.Config):
    retention_hours: int = maintenance.DEFAULT_RETENTION_HOURS
    dry_run: bool = False


@dg.op(**pools.CPU_ON_DEMAND.op_kwargs(),
       description="Compact small files, checkpoint and vacuum every Delta table under the lake "
                   "root (tables found by their _delta_log).")
def compact_and_vacuum_lake(context: dg.OpExecutionContext, config: MaintenanceConfig,
                            lake: LakeResource) -> dg.Output[int]:
    try:
        hours = maintenance.safe_retention_hours(config.retention_hours)
    except maintenance.RetentionTooShortError as exc:
        # a configuration error: retrying cannot help, and nothing has been touched
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    results = maintenance.maintain_lake(lake.store(), hours, dry_run=config.dry_run,
                                        log=context.log.info)
    failed = [r for r in results if not r.ok]
    report = markdown_table(
        ["table", "files before", "after", "compacted", "vacuumed", "version"],
        [(r.table, r.files_before, r.files_after, f"{r.files_removed}→{r.files_added}",
          r.files_vacuumed, f"{r.version_before}→{r.version_after}") for r in results])
    metadata = {
        "tables": len(results),
        "files_compacted": sum(r.files_removed for r in results),
        "files_vacuumed": sum(r.files_vacuumed for r in results),
        "partitions_zordered": sum(r.partitions_zordered for r in results),
        "retention_hours": config.retention_hours,
        "failed_tables": len(failed),
        "report": dg.MetadataValue.md(report),
    }
    if failed:
        # the other tables are done; fail so the run shows (and the failure sensor records) it
        raise dg.Failure(description="; ".join(r.error or "" for r in failed), metadata=metadata)
    return dg.Output(len(results), metadata=metadata)


@dg.job(tags={**pools.queue_tags("batch"), **job_owner_tags("delta_maintenance")},
        description="Nightly: compact and vacuum the lake's Delta tables.")
def delta_maintenance():
    compact_and_vacuum_lake()


delta_maintenance_schedule = dg.ScheduleDefinition(
    name="nightly_delta_maintenance",
    job=delta_maintenance,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="03:00 UTC: compact and vacuum every Delta table (batch queue).",
)
