"""The PostgreSQL-backed instance (deploy/dagster-postgres.yaml) against a real PostgreSQL 15.

A throwaway cluster is started on 127.0.0.1 (Debian's initdb/pg_ctl, run as the
`postgres` user when the tests run as root). A partition is materialized on real
recordings and a schedule is stopped; a fresh instance and a restarted
dagster-webserver still see the run, its event log and the schedule state.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from tests.conftest import land, require_service

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent
HUSKY = {"robot_id": "husky-01", "robot_type": "husky", "region": "us-east"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def pg_cluster() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 with a `dagster` database; yields the
    DAGSTER_PG_* variables (also used by benchmarks/restore_instance.py)."""
    base = Path(tempfile.mkdtemp(prefix="robolake-pg-"))
    data, password = base / "data", "robolake-test-pw"
    (base / "pw").write_text(password)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(base / "pw", "postgres")
    port = free_port()
    try:
        subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "dagster",
                                     "--pwfile", str(base / "pw"), "--auth-local=trust",
                                     "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off")
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                                     "-l", str(base / "log"), "start"]),
                       check=True, capture_output=True, timeout=120)
        subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", str(base), "-p", str(port),
                                     "-U", "dagster", "dagster"]),
                       check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        log = (base / "log").read_text() if (base / "log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr!r} {log}") from exc
    try:
        yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port),
               "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": password,
               "DAGSTER_PG_DB": "dagster"}
    finally:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                                     "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def have_postgres() -> bool:
    return bool((PG_BIN / "initdb").exists() and (os.geteuid() != 0 or shutil.which("runuser")))


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL 15 cluster on 127.0.0.1 with a `dagster` database."""
    require_service(have_postgres(), f"PostgreSQL 15 not installed ({PG_BIN}/initdb); run "
                                     "scripts/install-services.sh")
    with pg_cluster() as env:
        yield env


@contextmanager
def webserver(env: dict[str, str]) -> Iterator[str]:
    """dagster-webserver on loopback for workspace.yaml; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w",
         "workspace.yaml"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)  # its own group: the code server too
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"dagster-webserver did not start: {proc.stderr.read()!r}")
            time.sleep(0.5)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(f"{url}/graphql", method="POST",
                                     data=json.dumps({"query": query,
                                                      "variables": variables or {}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        body = json.loads(r.read())
    assert "errors" not in body, body
    return body["data"]


RUNS = "{ runsOrError { ... on Runs { results { runId status jobName } } } }"
LOGS = """query($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection {
  events { __typename ... on MaterializationEvent { partition assetKey { path } } } } } }"""
SCHEDULE = """{ scheduleOrError(scheduleSelector: {repositoryLocationName: "robolake",
  repositoryName: "__repository__", scheduleName: "nightly_delta_maintenance"}) {
  ... on Schedule { name scheduleState { status } } } }"""


def test_runs_event_logs_and_schedules_survive_a_restart(postgres, shared_data, tmp_path,
                                                         monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "deploy" / "dagster-postgres.yaml", home / "dagster.yaml")
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    land(landing, shared_data / "husky_ros2_converted.mcap", HUSKY)
    env = {**os.environ, **postgres, "DAGSTER_HOME": str(home), "ROBOLAKE_LANDING": str(landing),
           "ROBOLAKE_LAKE": str(lake)}
    env.pop("ROBOLAKE_DEPLOYMENT", None)
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    from robolake_assets.raw import raw_uploads
    from robolake_partitions import partition_key, robot_type_partitions
    from robolake_resources.lake import storage_resources

    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        instance.add_dynamic_partitions(robot_type_partitions.name, ["husky"])
        result = dg.materialize([raw_uploads], instance=instance, resources=storage_resources(),
                                partition_key=partition_key("2015-05-21", "husky"))
        assert result.success
        run_id = result.run_id

    # a schedule's state, written by the CLI into the same instance
    out = subprocess.run([str(BIN / "dagster"), "schedule", "stop", "nightly_delta_maintenance",
                          "-w", "workspace.yaml"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr

    # a fresh instance object (new process state, new connections) sees it all
    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
        mats = instance.fetch_materializations(dg.AssetKey("raw_uploads"), limit=10).records
        assert [m.partition_key for m in mats] == ["2015-05-21|husky"]
        assert instance.get_dynamic_partitions(robot_type_partitions.name) == ["husky"]

    # and so does the webserver, before and after a restart
    for _ in range(2):
        with webserver(env) as url:
            runs = graphql(url, RUNS)["runsOrError"]["results"]
            assert {(r["runId"], r["status"]) for r in runs} == {(run_id, "SUCCESS")}
            events = graphql(url, LOGS, {"runId": run_id})["logsForRun"]["events"]
            mat = [e for e in events if e["__typename"] == "MaterializationEvent"]
            assert [(m["assetKey"]["path"], m["partition"]) for m in mat] == [
                (["raw_uploads"], "2015-05-21|husky")]
            schedule = graphql(url, SCHEDULE)["scheduleOrError"]
            assert schedule["scheduleState"]["status"] == "STOPPED"
