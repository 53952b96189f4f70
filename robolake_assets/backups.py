"""Hourly backup of the Dagster instance database into the lake (`ops/backups/instance/`),
with the version of every Delta table pinned at the same stamp (`ops/backups/delta/`).

The rules (pg_dump in one snapshot, manifest last, retention) live in
`robolake.backup`; this module only schedules them. The database is the one the
instance itself uses (its PostgreSQL run storage), so the backup can never point
at another database than the one the UI shows. A schedule tick's time is the
backup's stamp: a retried or re-executed tick writes nothing twice.
"""

from datetime import UTC, datetime

import dagster as dg

from robolake import backup, lake_backup
from robolake_resources import pools
from robolake_resources.lake import LakeResource

SCHEDULED_TAG = "dagster/scheduled_execution_time"


class InstanceBackupConfig(dg.Config):
    keep_last: int = backup.DEFAULT_KEEP_LAST
    keep_daily: int = backup.DEFAULT_KEEP_DAILY


def instance_database(instance: dg.DagsterInstance) -> backup.PgTarget:
    """The PostgreSQL database behind this instance's run storage."""
    url = getattr(instance.run_storage, "postgres_url", None)
    if not url:
        raise dg.Failure(
            description=f"the instance stores runs in {type(instance.run_storage).__name__}, "
                        "not PostgreSQL: nothing to pg_dump (laptops keep SQLite files under "
                        "DAGSTER_HOME; production uses deploy/dagster-postgres.yaml)",
            allow_retries=False)
    return backup.PgTarget.from_url(url)


def tick_stamp(context: dg.OpExecutionContext) -> str:
    scheduled = context.run.tags.get(SCHEDULED_TAG)
    when = datetime.fromisoformat(scheduled) if scheduled else datetime.now(UTC)
    return backup.new_stamp(when)


@dg.op(**pools.CPU_ON_DEMAND.op_kwargs(),
       description="pg_dump the instance database to the lake's ops/backups/instance/, pin "
                   "the Delta tables' versions at the same stamp, apply the retention.")
def backup_instance_database(context: dg.OpExecutionContext, config: InstanceBackupConfig,
                             lake: LakeResource) -> dg.Output[str]:
    store = lake.store()
    target = instance_database(context.instance)
    record = backup.backup_instance(store, target, stamp=tick_stamp(context))
    # the lake's tables at the same point: restore-lake --stamp matches this backup
    pinned = lake_backup.pin_table_versions(store, record.stamp)
    dropped = backup.apply_retention(store, config.keep_last, config.keep_daily)
    context.log.info(f"backup {record.stamp}: {record.size_bytes} bytes "
                     f"({'written' if record.created else 'already there'}); "
                     f"retention dropped {len(dropped)}")
    return dg.Output(record.stamp, metadata={
        "key": record.key, "size_bytes": record.size_bytes, "sha256": record.sha256,
        "rows": sum(record.tables.values()), "dump_seconds": record.dump_seconds,
        "created": record.created, "tables_pinned": len(pinned),
        "dropped": dg.MetadataValue.json(dropped)})


@dg.job(tags=pools.queue_tags("batch"),
        description="Hourly: back up the Dagster instance database into the lake.")
def instance_backup():
    backup_instance_database()


def instance_backup_schedule(deployment: str) -> dg.ScheduleDefinition:
    """Running by default on Kubernetes (PostgreSQL instance); stopped on a laptop, whose
    SQLite instance has nothing to pg_dump."""
    return dg.ScheduleDefinition(
        name="hourly_instance_backup",
        job=instance_backup,
        cron_schedule="15 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if deployment == "k8s"
        else dg.DefaultScheduleStatus.STOPPED,
        description="xx:15 UTC: pg_dump of the instance database to ops/backups/instance "
                    "(keeps 48 hourly, then one a day for 30 days).",
    )
