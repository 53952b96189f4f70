"""Sensors that tell people: failed runs, failed blocking checks and freshness breaches go
to the tenants' webhooks and email (robolake/notify.py; upload verdicts are sent by the
gateway). Both are on by default; without any channel configured they send nothing.
"""

from __future__ import annotations

import dagster as dg

from robolake.notify import Notice, Notifier, Smtp

FRESHNESS_CHECK = "freshness"


def notifier() -> Notifier:
    """The tenants' channels, in the gateway's database ($ROBOLAKE_GATEWAY_DB, else
    $DAGSTER_HOME/gateway/gateway.db)."""
    from robolake.gateway.config import state_dir
    from robolake.gateway.db import open_database

    return Notifier(open_database(state_dir()), Smtp.from_env())


def run_tenants(tags: dict[str, str], notify: Notifier) -> list[str]:
    """Whose run it is: the platform API's requester, else the tenants of its robot type."""
    requested = tags.get("robolake/requested-by", "")
    if requested:
        return [requested.split("/", 1)[0]]
    robot_type = tags.get("dagster/partition/robot_type")
    return notify.tenants_of_robot_type(robot_type) if robot_type else []


def failed_run_notice(run: dg.DagsterRun, reason: str) -> Notice:
    partition = run.tags.get("dagster/partition", "")
    where = f" ({partition})" if partition else ""
    return Notice(key=f"run.failed:{run.run_id}", event="run.failed",
                  title=f"Run of {run.job_name}{where} failed",
                  text=f"{reason or 'the run failed'}\nrun {run.run_id}",
                  data={"run_id": run.run_id, "job": run.job_name, "partition": partition,
                        "reason": reason})


@dg.run_failure_sensor(name="notify_failed_runs", default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Sends each failed run to its tenant's webhook and email")
def notify_failed_runs(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    reason = context.failure_event.message or "" if context.failure_event else ""
    notify = notifier()
    reached = notify.notify(failed_run_notice(run, reason), run_tenants(dict(run.tags), notify))
    context.log.info(f"run {run.run_id}: notified {', '.join(reached) or 'nobody'}")


def check_notice(evaluation, run_id: str) -> tuple[Notice, str, str]:
    """(notice, partition, oldest waiting file) of a failed check evaluation."""
    meta = {k: v.value for k, v in evaluation.metadata.items()}
    asset, name = evaluation.asset_key.to_user_string(), evaluation.check_name
    partition = str(meta.get("partition") or evaluation.partition or "")
    if name == FRESHNESS_CHECK:
        oldest = str(meta.get("oldest_file", ""))
        return (Notice(key=f"freshness.breached:{oldest}", event="freshness.breached",
                       title="The cleaned layer is behind the landing zone",
                       text=f"{meta.get('files_waiting')} file(s) waiting, the oldest "
                            f"({oldest}) for {meta.get('lag_s')} s; SLA {meta.get('max_lag_s')} s",
                       data={k: v for k, v in meta.items() if isinstance(v, int | float | str)}),
                partition, oldest)
    where = f" on {partition}" if partition else ""
    return (Notice(key=f"check.failed:{run_id}:{asset}:{name}:{partition}", event="check.failed",
                   title=f"Blocking check {name} of {asset} failed{where}",
                   text=evaluation.description or f"see run {run_id}",
                   data={"run_id": run_id, "asset": asset, "check": name,
                         "partition": partition}), partition, "")


@dg.sensor(name="notify_failed_checks", minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Sends failed blocking checks and freshness breaches to the tenants' "
                       "webhooks and email")
def notify_failed_checks(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after),
        limit=500, ascending=True)
    notify, sent = None, 0
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.passed or not (evaluation.blocking
                                     or evaluation.check_name == FRESHNESS_CHECK):
            continue
        notify = notify or notifier()
        notice, partition, oldest = check_notice(evaluation, record.run_id)
        tenants = (notify.tenant_of_landing_key(oldest) if oldest else
                   notify.tenants_of_robot_type(partition.split("|")[-1]) if partition else [])
        sent += len(notify.notify(notice, tenants))
    if records:
        context.update_cursor(str(records[-1].storage_id))
    return dg.SkipReason(f"{len(records)} check evaluation(s) read, {sent} notification(s) sent")
