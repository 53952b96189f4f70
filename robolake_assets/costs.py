"""Ops: what the lake costs, for the UI.

`ops_costs` (hourly) charges today's storage (each layer's bytes at its tier's
price) into `ops/costs` and reports the month's spend so far per team and project
as numeric metadata, which the asset's page plots over its materializations: spend
per team over time. Run costs come from `run_costs_sensor` (sensors/costs.py).
"""

import datetime as dt

import dagster as dg

from robolake.costs import runs as C
from robolake.costs.budgets import job_owner_tags
from robolake.costs.prices import load_prices
from robolake_assets.helpers import markdown_table
from robolake_resources import pools
from robolake_resources.lake import LakeResource


@dg.asset(key=["ops", "costs"], group_name="ops", kinds={"delta"},
          description="Spend per team and project this month (ops/costs: runs priced by "
                      "run_costs_sensor, storage charged here daily); plotted per team.",
          **pools.cpu_on_demand())
def ops_costs(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    store = lake.store()
    now = dt.datetime.now(dt.UTC)
    day = now.date()
    rows = C.storage_rows(C.layer_bytes(store), load_prices(), day)
    C.record_run_costs(store, f"storage:{day.isoformat()}", rows)
    month = now.strftime("%Y-%m")
    by_team = C.report(store, month, "team")
    by_project = C.report(store, month, "project")
    metadata: dict = {"month": month,
                      "total_usd": float(sum(r["usd"] for r in by_team)),
                      "storage_usd_today": float(sum(r["usd"] for r in rows))}
    metadata |= {f"team_{r['team']}_usd": float(r["usd"]) for r in by_team}
    metadata |= {f"project_{r['project']}_usd": float(r["usd"]) for r in by_project}
    metadata["by_team"] = dg.MetadataValue.md(markdown_table(
        ["team", "USD", "runs", "node-hours"],
        [(r["team"], f"{r['usd']:.2f}", r["runs"], f"{r['node_hours']:.2f}")
         for r in by_team]) if by_team else "no spend yet")
    context.log.info(f"{month}: {metadata['total_usd']:.2f} USD so far")
    return dg.MaterializeResult(metadata=metadata)


ops_costs_job = dg.define_asset_job(
    "ops_costs_job", selection=[ops_costs.key],
    tags={**pools.queue_tags("batch"), **job_owner_tags("ops_costs_job")},
    description="Charge today's storage and report the month's spend per team.")

ops_costs_schedule = dg.ScheduleDefinition(
    name="hourly_ops_costs", job=ops_costs_job, cron_schedule="17 * * * *",
    execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly: storage charge and spend per team (ops/costs).")
