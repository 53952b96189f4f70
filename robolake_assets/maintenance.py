"""Nightly lake upkeep: Delta maintenance (compact, cleaned tables Z-ordered by robot_id,
ts_ns, and vacuum every table) and the tiering of a local lake by configs/retention.yaml.

The rules (table discovery, the retention that protects writes in flight, what moves to
the cold tier and what expires) live in `robolake.maintenance` and
`robolake.governance.tiering`; this module only schedules them. The jobs run in the batch
queue (lowest priority, capped), on on-demand CPU: both are safe to repeat, but there is
no point paying a Spot interruption for them.
"""


import dagster as dg

from robolake import maintenance
from robolake.costs.budgets import job_owner_tags
from robolake.storage import LocalStore
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


class TieringConfig(dg.Config):
    dry_run: bool = False


@dg.op(**pools.CPU_ON_DEMAND.op_kwargs(),
       description="Tier a local lake by configs/retention.yaml: files past their layer's "
                   "first transition move to <lake>/.cold/, expired ones are deleted (audited). "
                   "An S3 lake is tiered by its bucket's lifecycle rules instead.")
def tier_local_lake(context: dg.OpExecutionContext, config: TieringConfig,
                    lake: LakeResource) -> dg.Output[int]:
    from robolake.governance import tiering

    store = lake.store()
    if not isinstance(store, LocalStore):
        context.log.info(f"{store.uri}: an S3 lake is tiered by its bucket's lifecycle rules "
                         "(robolake.governance.retention.apply_lifecycle), not by this job")
        return dg.Output(0, metadata={"lake": store.uri, "skipped": "S3 lifecycle rules"})
    plan = tiering.plan_tiering(store)
    done = {} if config.dry_run else tiering.apply_tiering(store, plan)
    shown = plan.actions[:50]
    report = markdown_table(["action", "file", "tier", "bytes", "age (days)"],
                            [(a.action, a.key, a.tier, a.size, f"{a.age_days:.0f}")
                             for a in shown]) if shown else "nothing to tier"
    if len(plan.actions) > len(shown):
        report += f"\n\n… and {len(plan.actions) - len(shown)} more"
    metadata = {
        "lake": store.uri, "dry_run": config.dry_run,
        "files_to_cold": sum(a.action == "cold" for a in plan.actions),
        "files_expired": sum(a.action == "expire" for a in plan.actions),
        "bytes": sum(a.size for a in plan.actions),
        "left_in_delta_tables": plan.in_tables, "pinned_by_live_versions": plan.pinned,
        "done": dg.MetadataValue.json(done),
        "plan": dg.MetadataValue.md(report),
    }
    return dg.Output(sum(done.values()), metadata=metadata)


@dg.job(tags={**pools.queue_tags("batch"), **job_owner_tags("storage_tiering")},
        description="Nightly: move a local lake's files past their tier age to the cold "
                    "folder and delete expired ones (configs/retention.yaml).")
def storage_tiering():
    tier_local_lake()


storage_tiering_schedule = dg.ScheduleDefinition(
    name="nightly_storage_tiering",
    job=storage_tiering,
    cron_schedule="0 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="04:00 UTC: tier a local lake by configs/retention.yaml (an S3 lake's "
                "lifecycle rules do this on their own).",
)
