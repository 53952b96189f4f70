"""`failed_runs_sensor`: records every failed run, with its reason, in the lake's `ops/failed_runs`.

One row per run (keyed by run_id, so a re-evaluated tick never duplicates):
the job, when it failed, the run's failure message, each failed step's error,
the partition, the queue and what launched it. Messages are redacted of
credentials before they are written (`robolake.maintenance.redact`).
"""


import time

import dagster as dg

from robolake import maintenance
from robolake_resources.lake import LakeResource

_TRIGGER_TAGS = ("dagster/sensor_name", "dagster/schedule_name", "dagster/backfill",
                 "robolake/trigger")


def failed_run_row(run: dg.DagsterRun, failure: dg.DagsterEvent | None,
                   step_failures: list[dg.DagsterEvent], failed_ns: int | None = None) -> dict:
    """The `ops/failed_runs` row for a failed run (no I/O)."""
    tags = dict(run.tags)
    steps = []
    for event in step_failures:
        data = event.step_failure_data
        error = data.error.to_string() if data and data.error else (event.message or "")
        steps.append({"step_key": event.step_key or "", "error": error})
    reason = failure.message if failure is not None and failure.message else ""
    if failure is not None and failure.job_failure_data and failure.job_failure_data.error:
        reason = f"{reason}\n{failure.job_failure_data.error.to_string()}".strip()
    trigger = next((f"{k}={tags[k]}" for k in _TRIGGER_TAGS if tags.get(k)), None)
    return {
        "run_id": run.run_id,
        "job_name": run.job_name,
        "status": run.status.value,
        "failed_ns": failed_ns,
        "reason": reason or (steps[0]["error"] if steps else "unknown"),
        "failed_steps": steps,
        "partition_key": tags.get("dagster/partition"),
        "queue": tags.get("robolake/queue", "interactive"),
        "trigger": trigger,
        "tags": {k: v for k, v in tags.items() if not k.startswith(".dagster")},
    }


@dg.run_failure_sensor(
    name="failed_runs_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Records each failed run (job, reason, failed steps, partition, queue) in the "
                "Delta table ops/failed_runs.",
)
def failed_runs_sensor(context: dg.RunFailureSensorContext, lake: LakeResource) -> None:
    record = context.instance.get_run_record_by_id(context.dagster_run.run_id)
    end = record.end_time if record is not None and record.end_time else None
    row = failed_run_row(context.dagster_run, context.failure_event,
                         list(context.get_step_failure_events()),
                         int(end * 1e9) if end else time.time_ns())
    version = maintenance.record_failed_run(lake.store(), row)
    context.log.info(f"recorded failed run {row['run_id']} ({row['job_name']}) in "
                     f"{maintenance.FAILED_RUNS} v{version}")
