"""Owners and monthly budgets: configs/budgets.yaml, validated like every config.

Where it is: $ROBOLAKE_BUDGETS, else `budgets.yaml` beside the training configs
folder (as configs/prices.yaml).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pydantic import Field, model_validator

from robolake.costs.runs import PROJECT_TAG, TEAM_TAG
from robolake.storage import Store
from robolake.tables import append_new_rows
from robolake.yaml_config import Strict, read_yaml, validate_model

BUDGETS_ENV = "ROBOLAKE_BUDGETS"
LEVELS = ("info", "warning", "alert", "hold")


class BudgetsError(ValueError):
    """A budgets file that cannot be used; the message names the file and the field."""


class Owner(Strict):
    team: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    project: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class Thresholds(Strict):
    info: float = Field(0.70, gt=0)
    warning: float = Field(0.85, gt=0)
    alert: float = Field(0.95, gt=0)
    hold: float = Field(1.00, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not self.info < self.warning < self.alert <= self.hold:
            raise ValueError("expected info < warning < alert <= hold")
        return self


class Budget(Strict):
    monthly_usd: float = Field(ge=0)
    webhook_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$")


class Budgets(Strict):
    thresholds: Thresholds = Thresholds()
    queued_run_hours: float = Field(1.0, ge=0)
    # a queued run estimated above this many GPU-hours waits for an admin's approval
    approval_gpu_hours: float | None = Field(None, gt=0)
    owners: dict[str, Owner] = Field(default_factory=dict)
    teams: dict[str, Budget] = Field(default_factory=dict)
    projects: dict[str, Budget] = Field(default_factory=dict)

    def owner_of(self, job_name: str) -> Owner | None:
        """The owner of a job: the first `owners` pattern that matches its name."""
        for pattern, who in self.owners.items():
            if fnmatch.fnmatchcase(job_name, pattern):
                return who
        return None

    def owner_tags(self, job_name: str) -> dict[str, str]:
        who = self.owner_of(job_name)
        return {TEAM_TAG: who.team, PROJECT_TAG: who.project} if who else {}


def default_budgets_path() -> Path:
    if os.environ.get(BUDGETS_ENV, "").strip():
        return Path(os.environ[BUDGETS_ENV].strip()).expanduser()
    from robolake.settings import get_settings

    return get_settings().training_configs_dir.parent / "budgets.yaml"


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> Budgets:
    return validate_model(Budgets, read_yaml(path, BudgetsError, "budgets file"), str(path),
                          BudgetsError, "owners, teams and projects")


def load_budgets(path: str | Path | None = None) -> Budgets:
    """The validated budgets file (cached until it changes; none at all: no budgets)."""
    path = Path(path) if path is not None else default_budgets_path()
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        if path == default_budgets_path():
            return Budgets()
        raise BudgetsError(f"{path}: no such budgets file (set {BUDGETS_ENV})") from None
    return _load(path, mtime)


def job_owner_tags(job_name: str) -> dict[str, str]:
    """robolake/team and robolake/project for a job's definition (none if unowned)."""
    return load_budgets().owner_tags(job_name)


# --------------------------------------------------------------------------- status

ALERTS = "ops/alerts"
ALERTS_SCHEMA = pa.schema([
    ("alert_id", pa.string()), ("month", pa.string()), ("scope", pa.string()),
    ("name", pa.string()), ("level", pa.string()), ("threshold", pa.float64()),
    ("budget_usd", pa.float64()), ("spent_usd", pa.float64()), ("queued_usd", pa.float64()),
    ("ratio", pa.float64()), ("team", pa.string()), ("text", pa.string()),
    ("webhook_env", pa.string()), ("created_ns", pa.int64()),
])


@dataclass(frozen=True)
class BudgetStatus:
    scope: str  # team or project
    name: str
    budget_usd: float
    spent_usd: float
    queued_usd: float  # estimated cost of the scope's queued runs

    @property
    def ratio(self) -> float:
        total = self.spent_usd + self.queued_usd
        return total / self.budget_usd if self.budget_usd else (float("inf") if total else 0.0)

    def levels(self, thresholds: Thresholds) -> list[str]:
        """Every level reached (info, warning, alert, hold), lowest first."""
        return [lvl for lvl in LEVELS if self.ratio >= getattr(thresholds, lvl)]

    def over(self, thresholds: Thresholds) -> bool:
        return self.ratio >= thresholds.hold


def statuses(budgets: Budgets, spent: dict[str, dict[str, float]],
             queued: dict[str, dict[str, float]]) -> list[BudgetStatus]:
    """Each budgeted team and project: its month's spend and queued estimate
    (`spent` and `queued`: scope -> name -> USD)."""
    out = []
    for scope, table in (("team", budgets.teams), ("project", budgets.projects)):
        for name, budget in table.items():
            out.append(BudgetStatus(scope, name, budget.monthly_usd,
                                    spent.get(scope, {}).get(name, 0.0),
                                    queued.get(scope, {}).get(name, 0.0)))
    return out


def alert_rows(budgets: Budgets, status: BudgetStatus, month: str) -> list[dict]:
    """One row per level the status reached (keyed month:scope:name:level)."""
    rows = []
    for level in status.levels(budgets.thresholds):
        threshold = getattr(budgets.thresholds, level)
        budget = (budgets.teams if status.scope == "team" else budgets.projects)[status.name]
        text = (f"{LEVEL_ICONS[level]} Budget {level}: {status.scope} {status.name} is at "
                f"{status.ratio:.0%} of its {month} budget (${status.spent_usd:,.2f} spent + "
                f"${status.queued_usd:,.2f} queued of ${status.budget_usd:,.2f})")
        if level == "hold":
            text += ("; its new non-critical runs wait in the queue until the budget is "
                     "raised or an admin approves them (robolake runs approve RUN_ID)")
        rows.append({"alert_id": f"{month}:{status.scope}:{status.name}:{level}",
                     "month": month, "scope": status.scope, "name": status.name,
                     "level": level, "threshold": threshold, "budget_usd": status.budget_usd,
                     "spent_usd": status.spent_usd, "queued_usd": status.queued_usd,
                     "ratio": status.ratio,
                     "team": status.name if status.scope == "team" else "",
                     "text": text, "webhook_env": budget.webhook_env or "",
                     "created_ns": time.time_ns()})
    return rows


LEVEL_ICONS = {"info": ":information_source:", "warning": ":warning:",
               "alert": ":rotating_light:", "hold": ":no_entry:"}


def record_alerts(lake: Store, rows: list[dict]) -> list[dict]:
    """Append the alerts `ops/alerts` does not hold yet (one per threshold, scope and
    month, whatever else writes); returns the ones this call wrote (to be sent)."""
    if not rows:
        return []
    _version, written = append_new_rows(lake, ALERTS, rows, ALERTS_SCHEMA, ["alert_id"])
    return written


def slack_payload(row: dict) -> dict:
    """Slack-compatible incoming-webhook JSON for an alert."""
    return {"text": row["text"],
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": row["text"]}}],
            "robolake": {k: row[k] for k in ("alert_id", "scope", "name", "level", "ratio",
                                             "budget_usd", "spent_usd", "queued_usd")}}


def post_webhook(url: str, payload: dict, timeout: float = 10.0) -> int:
    """POST the JSON; returns the HTTP status (raises on a network error)."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status
