"""Training and dataset runs are charged to a team and a project (run tags
robolake/team and robolake/project; their jobs carry them from configs/budgets.yaml).

`require_owner_tags` is called first by those assets: on Kubernetes a run without the
tags fails at once, naming them (nothing was spent yet); on a laptop it is logged and
the run is charged to `unattributed`.
"""

from __future__ import annotations

import dagster as dg

from robolake.costs.runs import missing_owner_tags
from robolake.settings import get_settings


def owner_tags_problem(tags: dict[str, str], job_name: str) -> str | None:
    missing = missing_owner_tags(tags)
    if not missing:
        return None
    return (f"run of {job_name} has no {' or '.join(missing)} tag: training and dataset runs "
            "are charged to a team and project; launch it through its job (train_*, "
            "build_datasets) or add the tags")


def require_owner_tags(context: dg.AssetExecutionContext, deployment: str | None = None) -> None:
    problem = owner_tags_problem(dict(context.run.tags), context.run.job_name)
    if problem is None:
        return
    if (deployment or get_settings().deployment) == "k8s":
        raise dg.Failure(description=problem, allow_retries=False)
    context.log.warning(f"{problem} (a laptop run: charged to unattributed)")
