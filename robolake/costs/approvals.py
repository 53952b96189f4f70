"""Approving a queued run that a budget or the expensive-GPU rule holds: one function for
the CLI (`robolake runs approve`) and the platform API (POST /api/v1/runs/{id}/approve).

`approve` checks the run is still queued, records the approval in the Delta table
`ops/approvals` (keyed by run id: approving twice records one approval) and an `approve`
entry in the audit log naming the approver. Whoever holds the Dagster instance then tags
the run with `approval_tags` (the CLI at once; the budget sensor at its next tick for
approvals that came through the API, which reaches Dagster only through GraphQL), and
Dagster's queue starts it. No dagster import here: the gateway uses it too.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pyarrow as pa

from robolake.costs.runs import TEAM_TAG
from robolake.governance import audit
from robolake.storage import Store
from robolake.tables import append_new_rows, read_table

APPROVALS = "ops/approvals"
APPROVED_TAG = "robolake/approved"  # run tag: who approved it, when
HOLD_TAG = "robolake/hold"  # budget | approval (held), approved | released (may start)
APPROVALS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("job_name", pa.string()), ("approved_by", pa.string()),
    ("role", pa.string()), ("held", pa.string()), ("team", pa.string()),
    ("approved_ns", pa.int64()),
])


class ApprovalError(ValueError):
    """A run that cannot be approved (not queued any more); the message says why."""


@dataclass(frozen=True)
class RunView:
    """What approving needs to know of a Dagster run, however it was read."""

    run_id: str
    job_name: str
    status: str  # Dagster's run status name: QUEUED, STARTED, SUCCESS ...
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Approval:
    run_id: str
    job_name: str
    approved_by: str
    held: str  # why it was held ("" when it was not held)
    approved_ns: int
    new: bool  # False: the run had been approved before (nothing recorded again)

    @property
    def tags(self) -> dict[str, str]:
        return approval_tags(self.approved_by, self.approved_ns)

    def message(self) -> str:
        again = "" if self.new else " (already approved)"
        return (f"approved run {self.run_id} ({self.job_name}) as {self.approved_by}{again}"
                + (f"; it was held ({self.held}) and may start now" if self.held else ""))


def approval_tags(approved_by: str, approved_ns: int) -> dict[str, str]:
    stamp = dt.datetime.fromtimestamp(approved_ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {APPROVED_TAG: f"{approved_by} {stamp}", HOLD_TAG: "approved"}


def approve(lake: Store, run: RunView, actor: audit.Actor) -> Approval:
    """Approve a queued run: recorded once in ops/approvals and in the audit log."""
    if run.status.upper() != "QUEUED":
        raise ApprovalError(f"run {run.run_id} is {run.status.upper()}, not queued: nothing "
                            "to approve")
    held = run.tags.get(HOLD_TAG, "")
    held = held if held in ("budget", "approval") else ""
    row = {"run_id": run.run_id, "job_name": run.job_name, "approved_by": actor.name,
           "role": actor.role, "held": held, "team": run.tags.get(TEAM_TAG, ""),
           "approved_ns": time.time_ns()}
    _version, written = append_new_rows(lake, APPROVALS, [row], APPROVALS_SCHEMA, ["run_id"])
    if not written:
        [row] = approvals_of(lake, [run.run_id])
        return Approval(run.run_id, row["job_name"], row["approved_by"], row["held"],
                        row["approved_ns"], new=False)
    audit.record(lake, "approve", f"run:{run.run_id}", actor=actor,
                 details={"job": run.job_name, "held": held, "team": row["team"]})
    return Approval(run.run_id, run.job_name, actor.name, held, row["approved_ns"], new=True)


def approvals_of(lake: Store, run_ids: list[str]) -> list[dict]:
    """The recorded approvals of these runs (none for runs never approved)."""
    if not run_ids:
        return []
    table = read_table(lake, APPROVALS, filters={"run_id": list(run_ids)})
    return table.to_pylist() if table is not None else []
