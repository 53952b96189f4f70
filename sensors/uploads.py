"""`new_uploads_sensor`: notices new files in the landing zone and asks for runs."""


import hashlib
import json

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from robolake import raw
from robolake_partitions import partition_key, robot_type_partitions
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


def build_new_uploads_sensor(target: UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(name="new_uploads_sensor", target=target, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Watches ROBOLAKE_LANDING; registers new robot types and requests "
                           "one run per (date, robot type) partition that received files.")
    def new_uploads_sensor(context: dg.SensorEvaluationContext, landing: LandingResource,
                           lake: LakeResource) -> dg.SensorResult:
        landing_store = landing.store()
        fresh, cursor = new_files(raw.list_landing(landing_store), context.cursor)
        if not fresh:
            return dg.SensorResult(skip_reason="no new uploads", cursor=cursor)
        assignments = raw.assign_partitions(landing_store, lake.store(), fresh)
        by_partition: dict[tuple[str, str], list[str]] = {}
        for a in assignments:
            by_partition.setdefault(a.partition, []).append(f"{a.file.key}@{a.file.version}")
        known = set(context.instance.get_dynamic_partitions(robot_type_partitions.name))
        new_types = sorted({rt for _, rt in by_partition} - known)
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
        context.log.info(f"{len(fresh)} new file(s) -> {len(requests)} partition run(s)")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=(
                [robot_type_partitions.build_add_request(new_types)] if new_types else []),
            cursor=cursor,
        )

    return new_uploads_sensor
