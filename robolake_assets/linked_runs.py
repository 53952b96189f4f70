"""Runs executed in the `robolake` process, recorded as runs of the code location's jobs.

`execute_in_process` records a run without a code-location origin, so the UI's Jobs page,
the Overview timeline and "Re-execute" did not know the demo's and the CLI's runs belonged
to `ingest_through_raw`, `build_datasets` or `train_<model>`. `link_runs_to_jobs(instance)`
gives the runs that instance object creates the origin `dagster dev` gives the same job of
workspace.yaml (location `robolake`, repository `__repository__`): the run carries the
repository label the Jobs page filters on, and the UI resolves it to the loaded job.
"""

from __future__ import annotations

import functools
import os
import sys

import dagster as dg
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

LOCATION_NAME = "robolake"  # workspace.yaml's location_name
MODULE = "robolake_assets.definitions"
REPOSITORY_NAME = "__repository__"  # what dg.Definitions names its repository


def job_origin(job_name: str) -> RemoteJobOrigin:
    """The origin a job of workspace.yaml's code location has under `dagster dev`."""
    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        LoadableTargetOrigin(executable_path=sys.executable, module_name=MODULE,
                             working_directory=os.getcwd()),
        location_name=LOCATION_NAME)
    return RemoteRepositoryOrigin(location, REPOSITORY_NAME).get_job_origin(job_name)


def link_runs_to_jobs(instance: dg.DagsterInstance) -> dg.DagsterInstance:
    """Runs that `execute_in_process` creates on this instance object carry their job's
    code-location origin (execute_in_process has no parameter for it; the run's snapshot
    stays the in-process one, so the UI may say the loaded version can differ)."""
    create = instance.create_run_for_job

    @functools.wraps(create)
    def create_linked(job_def, *args, **kwargs):
        kwargs.setdefault("remote_job_origin", job_origin(job_def.name))
        return create(job_def, *args, **kwargs)

    instance.create_run_for_job = create_linked  # this object only, not the class
    return instance
