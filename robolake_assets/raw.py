"""Raw layer: validated, content-addressed copies of uploads indexed in `raw/uploads`."""


import dagster as dg

from robolake import contract, raw
from robolake.tables import read_table
from robolake_assets.helpers import column_schema, governed, markdown_table
from robolake_assets.metadata import figure, without_blanks
from robolake_partitions import daily_robot_type_partitions, split_key
from robolake_resources import pools
from robolake_resources.lake import LakeResource, LandingResource

_CHECKS = [
    dg.AssetCheckSpec("unique_uploads", asset="raw_uploads", blocking=True,
                      description="No (upload_id, landing_key) is indexed twice in a partition"),
    dg.AssetCheckSpec("raw_files_present", asset="raw_uploads", blocking=True,
                      description="Every accepted or flagged upload's copy exists with its size"),
    dg.AssetCheckSpec("quarantine_rate", asset="raw_uploads",
                      description=f"Less than {contract.MAX_QUARANTINE_RATE:.0%} of a partition's "
                                  "uploads are quarantined"),
]


def _uploads_markdown(rows: list[dict]) -> str:
    return markdown_table(
        ["file", "robot", "status", "score", "first reason"],
        [(r["file_name"], r["robot_id"] or "-", r["status"], f"{r['quality_score']:.0f}",
          (r["reasons"][0] if r["reasons"] else "").replace("|", "/")[:160])
         for r in rows[:200]])


def raw_check_results(lake, rows: list[dict], partition: str = "") -> list[dg.AssetCheckResult]:
    """The raw checks of a partition's rows; each result names its partition."""
    keys = [(r["upload_id"], r["landing_key"]) for r in rows]
    dupes = len(keys) - len(set(keys))
    stored = [r for r in rows if r["status"] in contract.USABLE_STATUSES]
    missing = [r["raw_key"] for r in stored if not lake.exists(r["raw_key"])]
    quarantined = sum(r["status"] == "quarantined" for r in rows)
    rate = quarantined / len(rows) if rows else 0.0
    return [
        dg.AssetCheckResult(check_name="unique_uploads", passed=dupes == 0,
                            metadata={"duplicate_rows": dupes, "partition": partition}),
        dg.AssetCheckResult(check_name="raw_files_present", passed=not missing,
                            metadata=without_blanks({
                                "checked": len(stored), "missing": len(missing),
                                "first_missing": missing[0] if missing else "",
                                "partition": partition})),
        dg.AssetCheckResult(check_name="quarantine_rate",
                            passed=rate < contract.MAX_QUARANTINE_RATE,
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"quarantine_rate": figure(rate), "quarantined": quarantined,
                                      "partition": partition}),
    ]


@dg.asset(
    group_name="raw",
    partitions_def=daily_robot_type_partitions,
    check_specs=_CHECKS,
    kinds={"delta", "python"},
    description="Every upload of a day and robot type: validated, scored, copied "
                "content-addressed under raw/files/, indexed in the Delta table raw/uploads. "
                "Broken files are quarantined with their reasons.",
    **governed(raw.RAW_UPLOADS, raw.UPLOADS_SCHEMA),
    **pools.cpu_spot(),
)
def raw_uploads(context: dg.AssetExecutionContext, lake: LakeResource,
                landing: LandingResource) -> dg.MaterializeResult:
    day, robot_type = split_key(context.partition_key)
    with pools.retry_only_transient():
        lake_store = lake.store()
        result = raw.ingest_partition(landing.store(), lake_store, day, robot_type,
                                      log=context.log.info)
    table = read_table(lake_store, raw.RAW_UPLOADS,
                       filters={"date": day, "robot_type": robot_type})
    rows = table.to_pylist() if table is not None else []
    by_status = {s: sum(r["status"] == s for r in rows) for s in contract.STATUSES}
    metadata = {
        "dagster/row_count": len(rows),
        "dagster/column_schema": column_schema(raw.UPLOADS_SCHEMA, raw.RAW_UPLOADS),
        "dagster/uri": lake_store.table_uri(raw.RAW_UPLOADS),
        "new_uploads": len(result.new_rows),
        "already_indexed": result.skipped,
        "bytes": sum(r["size_bytes"] for r in rows),
        "messages": sum(r["message_count"] for r in rows),
        "mean_quality_score": round(sum(r["quality_score"] for r in rows) / len(rows), 1)
        if rows else 0.0,
        **{f"uploads_{s}": n for s, n in by_status.items()},
        "delta_version": result.table_version,  # None (left out): nothing new was written
        "uploads": dg.MetadataValue.md(_uploads_markdown(rows)),
    }
    return dg.MaterializeResult(
        metadata=without_blanks(metadata),
        check_results=raw_check_results(lake_store, rows, str(context.partition_key)))
