"""`new_uploads_sensor`: notices new files in the landing zone and asks for runs."""


import hashlib
import json

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from robolake import ingest_plan, raw
from robolake_partitions import daily_partitions, partition_key, robot_type_partitions
from robolake_resources.lake import LakeResource, LandingResource


def _changed_ns(f: raw.LandingFile) -> int:
    return max(f.mtime_ns, f.sidecar_mtime_ns)


def new_files(files: list[raw.LandingFile],
              cursor: str | None) -> tuple[list[raw.LandingFile], str]:
    """Files changed since the cursor, and the next cursor.

    The cursor is a watermark (latest change time seen) plus the versions seen
    at exactly that time, so it stays small however many files land. A file
    whose sidecar arrives later counts as changed.
    """
    state = json.loads(cursor) if cursor else {"watermark_ns": -1, "at_watermark": []}
    mark, seen = state["watermark_ns"], set(state["at_watermark"])
    fresh = [f for f in files if _changed_ns(f) > mark
             or (_changed_ns(f) == mark and f"{f.key}@{f.version}" not in seen)]
    top = max([mark] + [_changed_ns(f) for f in files])
    at_top = sorted(f"{f.key}@{f.version}" for f in files if _changed_ns(f) == top)
    if top == mark:
        at_top = sorted(seen | set(at_top))
    return fresh, json.dumps({"watermark_ns": top, "at_watermark": at_top})


def _first_day() -> str:
    return daily_partitions.start.strftime("%Y-%m-%d")


def _with_held(files: list[raw.LandingFile], fresh: list[raw.LandingFile],
               cursor: str | None) -> list[raw.LandingFile]:
    """The fresh files plus those an earlier tick held (dated before the first daily
    partition of the definitions loaded then)."""
    held = set(json.loads(cursor).get("held", [])) if cursor else set()
    names = {f"{f.key}@{f.version}" for f in fresh}
    return fresh + [f for f in files if f"{f.key}@{f.version}" in held - names]


def _hold(cursor: str, held: list[raw.Assignment]) -> str:
    state = json.loads(cursor)
    state["held"] = sorted(f"{a.file.key}@{a.file.version}" for a in held)
    return json.dumps(state)


def _run_requests(assignments: list[raw.Assignment]) -> list[dg.RunRequest]:
    by_partition: dict[tuple[str, str], list[str]] = {}
    for a in assignments:
        by_partition.setdefault(a.partition, []).append(f"{a.file.key}@{a.file.version}")
    requests = []
    for (day, robot_type), versions in sorted(by_partition.items()):
        # run_key names the exact files, so a restarted sensor never launches twice
        digest = hashlib.sha1("\n".join(sorted(versions)).encode()).hexdigest()[:16]
        requests.append(dg.RunRequest(
            partition_key=partition_key(day, robot_type),
            run_key=f"{day}|{robot_type}|{digest}",
            tags={"robolake/trigger": "new_uploads_sensor",
                  "robolake/new_files": str(len(versions))},
        ))
    return requests


def build_new_uploads_sensor(target: UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(name="new_uploads_sensor", target=target, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Watches ROBOLAKE_LANDING; registers new robot types and requests "
                           "one run per (date, robot type) partition with files not ingested "
                           "yet.")
    def new_uploads_sensor(context: dg.SensorEvaluationContext, landing: LandingResource,
                           lake: LakeResource) -> dg.SensorResult:
        landing_store = landing.store()
        files = raw.list_landing(landing_store)
        fresh, cursor = new_files(files, context.cursor)
        fresh = _with_held(files, fresh, context.cursor)
        if not fresh:
            return dg.SensorResult(skip_reason="no new uploads", cursor=cursor)
        lake_store = lake.store()
        assigned = raw.assign_partitions(landing_store, lake_store, fresh)
        # files already ingested (by `robolake ingest`, `make demo`, a backfill) need no run
        todo = ingest_plan.undone(lake_store, assigned, "cleaned")
        held = [a for a in todo if a.date < _first_day()]
        assignments = [a for a in todo if a.date >= _first_day()]
        if len(todo) < len(assigned):
            context.log.info(f"{len(assigned) - len(todo)} new file(s) already ingested "
                             "through the cleaned layer: no run for them")
        if held:
            context.log.warning(
                f"{len(held)} file(s) dated before the first daily partition {_first_day()} "
                f"(e.g. {held[0].file.key}, {held[0].date}): held until the code location is "
                "reloaded (its partitions then start at the lake's first date), or run "
                "`robolake ingest`")
        cursor = _hold(cursor, held)
        if not assignments:
            return dg.SensorResult(skip_reason=f"{len(fresh)} new file(s), none to run now",
                                   cursor=cursor)
        requests = _run_requests(assignments)
        known = set(context.instance.get_dynamic_partitions(robot_type_partitions.name))
        new_types = sorted({a.robot_type for a in assignments} - known)
        context.log.info(f"{len(assignments)} file(s) to ingest -> {len(requests)} "
                         "partition run(s)")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=(
                [robot_type_partitions.build_add_request(new_types)] if new_types else []),
            cursor=cursor,
        )

    return new_uploads_sensor
