"""Feature layer: corner-case scores per aligned frame, partitioned like the cleaned layer.

`corner_case_scores` has the cleaned layer's (date, robot type) partitions and
eager automation: a cleaned partition is scored right after it lands (the
automation sensor), and `robolake ingest --through features` (or a later layer)
runs it per partition. Rarity is relative to the whole fleet, so the domain
(`robolake.datasets.scenarios.refresh_corner_cases`) recomputes the scores table
as a whole when the aligned frames changed and is a no-op otherwise; a
partition's materialization reports that partition's rows.
"""

import dagster as dg

from robolake import contract
from robolake.datasets.scenarios import CORNER_CASES, SCENARIOS, refresh_corner_cases
from robolake_assets.automation import after_deps_update
from robolake_assets.helpers import column_lineage, governed, markdown_table
from robolake_partitions import daily_robot_type_partitions, split_key
from robolake_resources import pools
from robolake_resources.lake import LakeResource

GROUP = "features"


@dg.asset(
    group_name=GROUP,
    deps=["cleaned_aligned_frames"],
    partitions_def=daily_robot_type_partitions,
    automation_condition=after_deps_update,
    kinds={"delta", "polars"},
    description="Corner-case scores per aligned frame (hard braking, sharp turns, GPS loss, "
                f"sensor faults, rare robot types) in {CORNER_CASES}",
    **governed(CORNER_CASES),
    **pools.cpu_spot(),
)
def corner_case_scores(context: dg.AssetExecutionContext, lake: LakeResource):
    import polars as pl

    from robolake.tables import read_table

    day, robot_type = split_key(context.partition_key)
    with pools.retry_only_transient():
        store = lake.store()
        source, version = refresh_corner_cases(store)
    table = read_table(store, CORNER_CASES, columns=["scenario", "corner_case_score"],
                       filters={"date": day, "robot_type": robot_type})
    scored = pl.from_arrow(table) if table is not None else pl.DataFrame(
        schema={"scenario": pl.String, "corner_case_score": pl.Float64})
    counts = scored.group_by("scenario").len().sort("scenario")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": scored.height,
        "dagster/uri": store.table_uri(CORNER_CASES),
        "delta_version": version,
        "aligned_frames_version": source,
        **column_lineage(CORNER_CASES),
        "corner_cases": int((scored["corner_case_score"] >= contract.CORNER_CASE_THRESHOLD).sum()),
        "scenarios": dg.MetadataValue.md(markdown_table(
            ["scenario", "frames"], [(r["scenario"], r["len"]) for r in counts.to_dicts()])),
        "scored": dg.MetadataValue.text(", ".join(SCENARIOS)),
    })
