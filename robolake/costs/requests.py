"""Object-store request costs of a run, from counts the lake records anyway.

- PUT: every Delta commit a run makes is in the audit log (ops/audit, action `write`,
  actor `run:<run_id>`, written by robolake.tables after each commit) with the files it
  added and removed. Each added file is one PUT, and so is the commit's own log entry
  (`_delta_log/<version>.json`). A removed file costs nothing at commit time (it is a line
  in the log; VACUUM deletes it later, and S3 does not charge DELETEs).
- GET: a dataset build pins the Delta version of every table it reads
  (`input_delta_versions` on its materialization); each data file of those versions is
  counted as one GET. Partition pruning can skip files (fewer), a Parquet read issues a
  footer and a column-chunk range GET (more): an estimate of the order, not a bill.

Each count is priced at the tier of the table's layer (configs/prices.yaml `storage`),
per 1,000 requests, into `ops/costs` rows of kind `requests` (one per run, layer and
verb). Other reads and writes (raw file copies, shards, the Delta log reads of every
open) are not counted.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable

from robolake.costs.prices import Prices
from robolake.costs.runs import month_of, owner
from robolake.governance.audit import AUDIT
from robolake.storage import Store
from robolake.tables import open_table, read_table


def layer_of(table_key: str) -> str:
    return table_key.split("/", 1)[0]


def run_dates(start_ns: int, end_ns: int) -> list[str]:
    """The UTC dates (audit partitions) a run spans."""
    day = dt.datetime.fromtimestamp(start_ns / 1e9, dt.UTC).date()
    last = dt.datetime.fromtimestamp(end_ns / 1e9, dt.UTC).date()
    days = []
    while day <= last:
        days.append(day.isoformat())
        day += dt.timedelta(days=1)
    return days


def put_counts(lake: Store, run_id: str, dates: list[str]) -> dict[str, int]:
    """PUT requests per layer of the run's Delta commits (files added + 1 log entry each)."""
    table = read_table(lake, AUDIT, columns=["target", "details"],
                       filters={"date": dates, "actor": f"run:{run_id}", "action": "write"})
    counts: dict[str, int] = {}
    for row in table.to_pylist() if table is not None else []:
        added = int(json.loads(row["details"] or "{}").get("added", 0))
        layer = layer_of(row["target"])
        counts[layer] = counts.get(layer, 0) + added + 1
    return counts


def get_counts(lake: Store, reads: Iterable[tuple[str, int]]) -> dict[str, int]:
    """GET requests per layer of reading these (table, version)s: one per data file."""
    counts: dict[str, int] = {}
    for key, version in reads:
        table = open_table(lake, key)
        if table is None:
            continue
        table.load_as_version(int(version))
        counts[layer_of(key)] = counts.get(layer_of(key), 0) + len(table.file_uris())
    return counts


def request_rows(run: dict, puts: dict[str, int], gets: dict[str, int], prices: Prices,
                 end_ns: int) -> list[dict]:
    """`ops/costs` rows (kind `requests`) of a run (`run`: run_id, job_name, tags)."""
    team, project = owner(run["tags"])
    rows = []
    for verb, counts in (("put", puts), ("get", gets)):
        for layer, count in sorted(counts.items()):
            if not count:
                continue
            tier_name = prices.storage.layers.get(layer, prices.storage.default)
            tier = prices.storage.tiers[tier_name]
            per_1000 = tier.put_per_1000 if verb == "put" else tier.get_per_1000
            rows.append({
                "run_id": run["run_id"], "step_key": f"requests:{layer}:{verb}",
                "kind": "requests", "job_name": run["job_name"], "asset": layer,
                "partition": run["tags"].get("dagster/partition", ""), "team": team,
                "project": project, "pool": tier_name, "capacity": verb.upper(),
                "instance_type": "", "start_ns": end_ns, "end_ns": end_ns,
                "duration_s": 0.0, "share": 0.0, "quantity": float(count),
                "usd": count / 1000 * per_1000, "month": month_of(end_ns),
                "recorded_ns": time.time_ns()})
    return rows
