"""Owners and monthly budgets: configs/budgets.yaml, validated like every config.

Where it is: $ROBOLAKE_BUDGETS, else `budgets.yaml` beside the training configs
folder (as configs/prices.yaml).
"""

from __future__ import annotations

import fnmatch
import functools
import os
from pathlib import Path

from pydantic import Field, model_validator

from robolake.costs.runs import PROJECT_TAG, TEAM_TAG
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
