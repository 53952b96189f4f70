"""The annotation queue (robolake/annotations.py): corner-case frames as Label Studio tasks.

`annotation_queue` follows the corner-case scores (eager automation): each run queues the
frames at or above the corner-case threshold that no earlier run queued, and links the
batch's Label Studio import file. People's labels come back with
`robolake annotations import EXPORT.json` into `cleaned/annotations`.
"""

import dagster as dg

from robolake import annotations, contract
from robolake_resources import pools
from robolake_resources.lake import LakeResource


@dg.asset(
    group_name="annotations",  # not in the partitioned ingest jobs: it spans partitions
    deps=["corner_case_scores"],
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"labelstudio", "delta"},
    description="Corner-case frames (score >= "
                f"{contract.CORNER_CASE_THRESHOLD}) as Label Studio tasks with the camera frame, "
                f"a LiDAR bird's-eye view and context; queued once each in {annotations.QUEUE}",
    **pools.cpu_spot(),
)
def annotation_queue(context: dg.AssetExecutionContext, lake: LakeResource):
    store = lake.store()
    with pools.retry_only_transient():
        result = annotations.queue_corner_cases(store, contract.CORNER_CASE_THRESHOLD,
                                                log=context.log.info)
    with_camera = sum("camera" in t["data"] for t in result.tasks)
    return dg.MaterializeResult(metadata={
        "tasks_queued": len(result.tasks),
        "already_queued": result.already_queued,
        "with_camera_frame": with_camera,
        "label_studio_import": dg.MetadataValue.path(store.table_uri(result.tasks_key))
        if result.tasks_key else "nothing new",
        "label_config": dg.MetadataValue.path(store.table_uri("annotations/label_config.xml")),
    })
