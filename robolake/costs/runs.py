"""The cost of every run, step by step, in the Delta table `ops/costs`.

A finished step costs its duration x the share of a node it asked for x the
pool's price per hour (Spot or on-demand, as its pool runs). The share is the
largest of CPU, memory and GPUs requested over what the pool's reference instance
type has (configs/prices.yaml), so a step that asks for half a node's memory pays
for half the node. Storage is charged per day: each lake layer's bytes x its tier's
GB-month price / the days of the month, one row per layer and day.

Rows are keyed by (run_id, step_key) and carry job, asset, partition, team and
project; a run's rows are replaced as a whole (`record_run_costs`), so processing a
run twice leaves one set of rows. Runs are charged to their `robolake/team` and
`robolake/project` tags (UNATTRIBUTED when missing).
"""

from __future__ import annotations

import calendar
import datetime as dt
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from robolake.costs.prices import Prices, cpu_cores, memory_gib
from robolake.storage import Store
from robolake.tables import read_table, replace_rows

COSTS = "ops/costs"
TEAM_TAG, PROJECT_TAG, CRITICAL_TAG = "robolake/team", "robolake/project", "robolake/critical"
UNATTRIBUTED = "unattributed"
GB = 1e9  # storage is priced per decimal GB
LAYERS = ("raw", "cleaned", "features", "datasets", "models", "ops")

COSTS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("step_key", pa.string()), ("kind", pa.string()),
    ("job_name", pa.string()), ("asset", pa.string()), ("partition", pa.string()),
    ("team", pa.string()), ("project", pa.string()), ("pool", pa.string()),
    ("capacity", pa.string()), ("instance_type", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("duration_s", pa.float64()),
    ("share", pa.float64()), ("quantity", pa.float64()), ("usd", pa.float64()),
    ("month", pa.string()), ("recorded_ns", pa.int64()),
])


@dataclass(frozen=True)
class StepUsage:
    """What one step of a run asked for and how long it ran."""

    step_key: str
    pool: str | None  # None: the local executor (no pool: charged nothing)
    start_ns: int
    end_ns: int
    requests: dict[str, str]  # k8s requests: cpu, memory, nvidia.com/gpu
    asset: str = ""


def owner(tags: dict[str, str]) -> tuple[str, str]:
    return tags.get(TEAM_TAG) or UNATTRIBUTED, tags.get(PROJECT_TAG) or UNATTRIBUTED


def missing_owner_tags(tags: dict[str, str]) -> list[str]:
    return [t for t in (TEAM_TAG, PROJECT_TAG) if not tags.get(t)]


def month_of(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m")


def node_share(usage: StepUsage, prices: Prices) -> tuple[float, str]:
    """(share of the pool's reference node the step asked for, that type)."""
    pool = prices.pool(usage.pool or "")
    node = pool.reference_type
    parts = [cpu_cores(usage.requests.get("cpu", 0)) / node.vcpu,
             memory_gib(usage.requests.get("memory", 0)) / node.memory_gib]
    if node.gpus:
        parts.append(int(usage.requests.get("nvidia.com/gpu", 0)) / node.gpus)
    return min(1.0, max(parts)), pool.reference


def step_cost_row(run: dict, usage: StepUsage, prices: Prices, spot: bool) -> dict:
    """One `ops/costs` row for a finished step (`run`: run_id, job_name, tags)."""
    team, project = owner(run["tags"])
    seconds = max(0.0, (usage.end_ns - usage.start_ns) / 1e9)
    share, instance, usd = 0.0, "", 0.0
    if usage.pool:
        share, instance = node_share(usage, prices)
        usd = seconds / 3600 * share * prices.pool(usage.pool).reference_type.price(spot)
    return {"run_id": run["run_id"], "step_key": usage.step_key, "kind": "compute",
            "job_name": run["job_name"], "asset": usage.asset,
            "partition": run["tags"].get("dagster/partition", ""), "team": team,
            "project": project, "pool": usage.pool or "local",
            "capacity": "spot" if spot else "on-demand", "instance_type": instance,
            "start_ns": usage.start_ns, "end_ns": usage.end_ns, "duration_s": seconds,
            "share": share, "quantity": seconds / 3600 * share, "usd": usd,
            "month": month_of(usage.end_ns), "recorded_ns": time.time_ns()}


def record_run_costs(lake: Store, run_id: str, rows: list[dict]) -> int:
    """Replace the run's rows in `ops/costs` with `rows` (one keyed commit)."""
    data = pa.Table.from_pylist([{n: r.get(n) for n in COSTS_SCHEMA.names} for r in rows],
                                schema=COSTS_SCHEMA)
    return replace_rows(lake, COSTS, data, "run_id", [run_id])


def layer_bytes(lake: Store, layers: Iterable[str] = LAYERS) -> dict[str, int]:
    """Bytes stored under each layer's folder of the lake."""
    return {layer: sum(o.size for o in lake.list(f"{layer}/")) for layer in layers}


def storage_rows(sizes: dict[str, int], prices: Prices, day: dt.date) -> list[dict]:
    """One row per layer: its bytes x its tier's GB-month price for one day."""
    days = calendar.monthrange(day.year, day.month)[1]
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1e9)
    rows = []
    for layer, size in sorted(sizes.items()):
        tier_name = prices.storage.layers.get(layer, prices.storage.default)
        gb_days = size / GB / days  # GB-months held for this day
        rows.append({
            "run_id": f"storage:{day.isoformat()}", "step_key": layer, "kind": "storage",
            "job_name": "", "asset": layer, "partition": day.isoformat(),
            "team": "platform", "project": "lake", "pool": tier_name, "capacity": "",
            "instance_type": "", "start_ns": start, "end_ns": start + 86_400 * 10**9,
            "duration_s": 86_400.0, "share": 1.0, "quantity": gb_days,
            "usd": gb_days * prices.storage.tiers[tier_name].gb_month,
            "month": day.strftime("%Y-%m"), "recorded_ns": time.time_ns()})
    return rows


BY = {"team": "team", "project": "project", "job": "job_name", "kind": "kind",
      "pool": "pool"}


def report(lake: Store, month: str, by: str = "team") -> list[dict]:
    """Spend of a month (YYYY-MM) grouped by team, project, job, kind or pool, largest
    first: usd (all of it), runs, hours of node-share, and the part of usd that is
    object-store requests (robolake.costs.requests)."""
    if by not in BY:
        raise ValueError(f"--by {by!r}: expected one of {', '.join(BY)}")
    try:
        dt.datetime.strptime(month, "%Y-%m")
    except ValueError:
        raise ValueError(f"--month {month!r}: expected YYYY-MM, e.g. 2026-11") from None
    columns = list(dict.fromkeys(["run_id", BY[by], "usd", "quantity", "kind"]))  # by kind
    table = read_table(lake, COSTS, columns=columns, filters={"month": month})
    if table is None or table.num_rows == 0:
        return []
    import polars as pl

    frame = pl.from_arrow(table)
    out = (frame.group_by(BY[by])
           .agg(pl.col("usd").sum(), pl.col("run_id").n_unique().alias("runs"),
                pl.col("quantity").filter(pl.col("kind") == "compute").sum()
                .alias("node_hours"),
                pl.col("usd").filter(pl.col("kind") == "requests").sum()
                .alias("requests_usd"))
           .rename({BY[by]: by}).sort("usd", descending=True))
    return out.to_dicts()


def spend(lake: Store, month: str, by: str) -> dict[str, float]:
    """USD spent in a month per team (or project)."""
    return {r[by]: r["usd"] for r in report(lake, month, by)}


def read_costs(lake: Store, filters: dict[str, object] | None = None) -> list[dict]:
    table = read_table(lake, COSTS, filters=filters)
    return table.to_pylist() if table is not None else []
