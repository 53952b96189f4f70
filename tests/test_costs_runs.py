"""The cost of every run: real runs on a real (temporary) Dagster instance, priced from
their event log into a real Delta table ops/costs, reported per team, project and job."""

from __future__ import annotations

import datetime as dt
import time

import dagster as dg
import pytest

from robolake.costs import runs as C
from robolake.costs.prices import load_prices
from robolake.storage import open_store
from robolake_resources import pools
from robolake_resources.lake import LakeResource
from robolake_sensors.costs import record_finished_runs

PRICES = load_prices()
OWNER = {C.TEAM_TAG: "perception", C.PROJECT_TAG: "lidar"}


@dg.asset(**pools.cpu_spot())
def etl_step() -> int:
    time.sleep(0.3)
    return 1


@dg.asset(deps=[etl_step], **pools.gpu())
def gpu_step() -> None:
    time.sleep(0.2)


# (no retry: the pool's policy would wait a minute before failing for good)
@dg.asset(**{**pools.cpu_on_demand(), "retry_policy": None})
def broken_step() -> None:
    raise RuntimeError("bad input")


@pytest.fixture(scope="module")
def priced(tmp_path_factory):
    lake = open_store(tmp_path_factory.mktemp("lake"))
    with dg.instance_for_test() as instance:
        ok = dg.materialize([etl_step, gpu_step], instance=instance, tags=OWNER)
        bad = dg.materialize([broken_step], instance=instance, raise_on_error=False,
                             tags={C.TEAM_TAG: "data-platform", C.PROJECT_TAG: "ingestion"})
        untagged = dg.materialize([etl_step], instance=instance)
        cursor, done = record_finished_runs(instance, lake, None)
        first = C.read_costs(lake)
        # processing every run again (a reset cursor) replaces their rows: no double count
        record_finished_runs(instance, lake, None)
        again_cursor, again = record_finished_runs(instance, lake, cursor)
        yield {"lake": lake, "ok": ok, "bad": bad, "untagged": untagged, "done": done,
               "first": first, "again": again, "instance": instance}


def test_each_step_costs_duration_times_share_times_price(priced):
    rows = {(r["run_id"], r["step_key"]): r for r in priced["first"]}
    assert set(priced["done"]) == {priced["ok"].run_id, priced["bad"].run_id,
                                   priced["untagged"].run_id}
    etl = rows[(priced["ok"].run_id, "etl_step")]
    gpu = rows[(priced["ok"].run_id, "gpu_step")]
    # cpu_spot asks for 2 CPUs / 8Gi of an m6i.2xlarge (8 vCPU, 32 GiB): a quarter, Spot
    assert (etl["pool"], etl["capacity"], etl["instance_type"], etl["share"]) == (
        "cpu_spot", "spot", "m6i.2xlarge", 0.25)
    assert 0.3 <= etl["duration_s"] < 30
    assert etl["usd"] == pytest.approx(etl["duration_s"] / 3600 * 0.25 * 0.152)
    # gpu_standard asks for the one GPU of a g5.2xlarge: the whole node, on-demand
    assert (gpu["pool"], gpu["capacity"], gpu["share"]) == ("gpu_standard", "on-demand", 1.0)
    assert gpu["usd"] == pytest.approx(gpu["duration_s"] / 3600 * 1.212)
    assert (etl["team"], etl["project"], etl["asset"]) == ("perception", "lidar", "etl_step")
    assert etl["job_name"] == "__ephemeral_asset_job__" and etl["kind"] == "compute"
    assert etl["month"] == dt.datetime.now(dt.UTC).strftime("%Y-%m")
    # a failed step is paid for too; an untagged run is charged to nobody in particular
    broken = rows[(priced["bad"].run_id, "broken_step")]
    assert broken["team"] == "data-platform" and broken["usd"] > 0 and broken["asset"] == ""
    assert rows[(priced["untagged"].run_id, "etl_step")]["team"] == C.UNATTRIBUTED


def test_reprocessing_never_double_counts(priced):
    now = C.read_costs(priced["lake"])
    assert len(now) == len(priced["first"]) == 4
    assert sum(r["usd"] for r in now) == pytest.approx(sum(r["usd"] for r in priced["first"]))
    assert priced["again"] == []  # nothing finished after the cursor


def test_report_by_team_project_and_job_and_the_cli(priced, capsys):
    from robolake_assets.cli import main

    lake, month = priced["lake"], dt.datetime.now(dt.UTC).strftime("%Y-%m")
    rows = priced["first"]
    by_team = {r["team"]: r for r in C.report(lake, month, "team")}
    assert set(by_team) == {"perception", "data-platform", C.UNATTRIBUTED}
    assert by_team["perception"]["usd"] == pytest.approx(
        sum(r["usd"] for r in rows if r["team"] == "perception"))
    assert by_team["perception"]["runs"] == 1
    assert C.spend(lake, month, "project")["lidar"] == by_team["perception"]["usd"]
    assert C.report(lake, "2020-01", "team") == []
    with pytest.raises(ValueError, match="--month '2026-13': expected YYYY-MM"):
        C.report(lake, "2026-13")
    assert main(["costs", "report", "--month", month, "--by", "job",
                 "--lake", str(lake.uri if hasattr(lake, "uri") else lake)]) == 0
    out = capsys.readouterr().out
    assert "__ephemeral_asset_job__" in out
    total = sum(r["usd"] for r in rows)
    assert f"{total:.2f}" in out.splitlines()[-1]


def test_storage_is_charged_per_layer_and_day_and_plotted_per_team(priced, tmp_path):
    lake = priced["lake"]
    lake.write_bytes("raw/files/a.mcap", b"x" * 3_000_000)
    lake.write_bytes("cleaned/imu/part-0.parquet", b"y" * 1_000_000)
    day = dt.date(2026, 11, 5)
    rows = {r["step_key"]: r for r in C.storage_rows(C.layer_bytes(lake), PRICES, day)}
    assert rows["raw"]["pool"] == "s3_standard_ia" and rows["cleaned"]["pool"] == "s3_standard"
    assert rows["raw"]["usd"] == pytest.approx(0.003 / 30 * 0.0125)
    assert rows["cleaned"]["quantity"] == pytest.approx(0.001 / 30)
    result = dg.materialize([_ops_costs()], instance=priced["instance"],
                            resources={"lake": LakeResource(root=str(lake.uri))})
    meta = result.asset_materializations_for_node("ops__costs")[0].metadata
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    team = C.spend(lake, month, "team")
    assert meta["team_perception_usd"].value == pytest.approx(team["perception"])
    assert team["platform"] > 0
    assert meta["team_platform_usd"].value == pytest.approx(team["platform"])
    assert meta["total_usd"].value == pytest.approx(sum(team.values()))


def _ops_costs():
    from robolake_assets.costs import ops_costs

    return ops_costs


def test_jobs_carry_their_owner_and_untagged_training_fails_on_k8s(priced):
    from robolake_assets.definitions import defs
    from robolake_assets.helpers import require_owner_tags

    repo = defs.get_repository_def()
    owners = {name: (repo.get_job(name).tags.get(C.TEAM_TAG),
                     repo.get_job(name).tags.get(C.PROJECT_TAG))
              for name in ("train_imu_gps_demo", "build_datasets", "ingest_through_cleaned",
                           "delta_maintenance", "ops_costs_job")}
    assert owners == {"train_imu_gps_demo": ("perception", "models"),
                      "build_datasets": ("data-platform", "datasets"),
                      "ingest_through_cleaned": ("data-platform", "ingestion"),
                      "delta_maintenance": ("data-platform", "lake"),
                      "ops_costs_job": ("data-platform", "lake")}

    @dg.asset
    def training_like(context) -> None:
        require_owner_tags(context, deployment="k8s")

    untagged = dg.materialize([training_like], instance=priced["instance"],
                              raise_on_error=False, tags={C.TEAM_TAG: "perception"})
    assert not untagged.success
    [failure] = [e for e in untagged.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "has no robolake/project tag" in failure.step_failure_data.error.message
    tagged = dg.materialize([training_like], instance=priced["instance"], tags=OWNER)
    assert tagged.success


PYTORCHJOB = pools.gpu_sized("gpu_high", 2, ["p4d.24xlarge"])


@dg.asset(**pools.cpu_on_demand())
def multi_node_training() -> dg.MaterializeResult:
    """What the training asset reports after waiting for a 3-node PyTorchJob."""
    from robolake_resources.training_jobs import pytorchjob_pods

    start = time.time_ns()
    return dg.MaterializeResult(metadata={"pytorchjob_pods": dg.MetadataValue.json(
        pytorchjob_pods(PYTORCHJOB, 3, start, start + 1_800 * 10**9))})


def test_pytorchjob_pods_are_priced_per_pod():
    """The GPU pods of a multi-node job (issue 18), not only the CPU step that waited."""
    from robolake_sensors.costs import run_cost_rows

    with dg.instance_for_test() as instance:
        run = dg.materialize([multi_node_training], instance=instance, tags=OWNER)
        rows = {r["step_key"]: r for r in run_cost_rows(instance, run.dagster_run)}
    pods = [rows[f"multi_node_training@pytorchjob/{i}"] for i in range(3)]
    assert set(rows) == {"multi_node_training", *(p["step_key"] for p in pods)}
    node = PRICES.pool("gpu_high").reference_type
    for pod in pods:  # 2 of the reference node's GPUs for the half hour waited, on-demand
        assert (pod["pool"], pod["capacity"], pod["duration_s"]) == ("gpu_high", "on-demand",
                                                                     1800.0)
        assert pod["share"] == pytest.approx(2 / node.gpus)
        assert pod["usd"] == pytest.approx(0.5 * 2 / node.gpus * node.price(False))
        assert (pod["team"], pod["asset"]) == ("perception", "multi_node_training")
    assert rows["multi_node_training"]["pool"] == "cpu_on_demand"
