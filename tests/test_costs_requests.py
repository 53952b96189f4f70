"""Object-store request costs: PUTs counted from a run's Delta commits in the real audit log,
GETs from the files of the table versions a dataset build read, priced per tier into
ops/costs by the run cost sensor's own function, and shown by `robolake costs report`."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pyarrow as pa
import pytest

from robolake.costs import requests as R
from robolake.costs import runs as C
from robolake.costs.prices import load_prices
from robolake.governance.audit import Actor
from robolake.storage import open_store
from robolake.tables import append_rows, open_table
from robolake_resources.lake import LakeResource
from robolake_sensors.costs import record_finished_runs

PRICES = load_prices()
SCHEMA = pa.schema([("k", pa.string()), ("v", pa.int64())])
TODAY = dt.datetime.now(dt.UTC).date().isoformat()
MONTH = TODAY[:7]


def test_puts_are_files_added_plus_the_log_entry_of_each_commit_by_the_run(tmp_path):
    lake = open_store(tmp_path / "lake")
    lake.audit_actor = Actor("run:r-req", "run")  # what a run's LakeResource hands out
    for i in range(2):
        append_rows(lake, "cleaned/imu", [{"k": "a", "v": i}], SCHEMA)
    append_rows(lake, "raw/uploads", [{"k": "u", "v": 1}], SCHEMA)
    other = open_store(tmp_path / "lake")
    other.audit_actor = Actor("run:someone-else", "run")
    append_rows(other, "cleaned/imu", [{"k": "b", "v": 9}], SCHEMA)
    # each commit added one Parquet file: 1 PUT for it + 1 for the _delta_log entry
    assert R.put_counts(lake, "r-req", [TODAY]) == {"cleaned": 4, "raw": 2}
    assert R.put_counts(lake, "r-req", ["2020-01-01"]) == {}  # the audit partitions read
    assert R.put_counts(lake, "someone-else", [TODAY]) == {"cleaned": 2}
    # GETs: every data file of the versions read (v1 holds 2 files, v2 holds 3)
    assert len(open_table(lake, "cleaned/imu").file_uris()) == 3
    assert R.get_counts(lake, [("cleaned/imu", 1), ("cleaned/imu", 2)]) == {"cleaned": 5}
    assert R.get_counts(lake, [("cleaned/missing", 0)]) == {}

    run = {"run_id": "r-req", "job_name": "build_datasets", "tags": {C.TEAM_TAG: "perception",
                                                                     C.PROJECT_TAG: "lidar"}}
    rows = {r["step_key"]: r for r in R.request_rows(
        run, {"cleaned": 4, "raw": 2}, {"cleaned": 5}, PRICES, 1_780_000_000 * 10**9)}
    assert set(rows) == {"requests:cleaned:put", "requests:raw:put", "requests:cleaned:get"}
    standard, ia = PRICES.storage.tiers["s3_standard"], PRICES.storage.tiers["s3_standard_ia"]
    assert rows["requests:cleaned:put"]["usd"] == pytest.approx(4 / 1000 * standard.put_per_1000)
    assert rows["requests:raw:put"]["usd"] == pytest.approx(2 / 1000 * ia.put_per_1000)
    assert rows["requests:cleaned:get"]["usd"] == pytest.approx(5 / 1000 * standard.get_per_1000)
    assert rows["requests:raw:put"]["pool"] == "s3_standard_ia"  # raw lives in IA
    assert {r["kind"] for r in rows.values()} == {"requests"}
    assert rows["requests:cleaned:get"]["quantity"] == 5.0


@dg.asset
def writes_twice(lake: LakeResource) -> None:
    store = lake.store()
    append_rows(store, "features/windows", [{"k": "a", "v": 1}], SCHEMA)
    append_rows(store, "features/windows", [{"k": "b", "v": 2}], SCHEMA)


@dg.asset(deps=[writes_twice])
def reads_them() -> dg.MaterializeResult:
    # what a dataset build reports: the Delta versions it read (robolake_assets/datasets.py)
    return dg.MaterializeResult(metadata={
        "input_delta_versions": dg.MetadataValue.json({"features/windows": 1})})


def test_the_run_cost_sensor_charges_a_runs_requests_and_the_report_shows_them(tmp_path,
                                                                               capsys):
    from robolake_assets.cli import main

    lake = open_store(tmp_path / "lake")
    owner = {C.TEAM_TAG: "perception", C.PROJECT_TAG: "lidar"}
    with dg.instance_for_test() as instance:
        run = dg.materialize([writes_twice, reads_them], instance=instance, tags=owner,
                             resources={"lake": LakeResource(root=str(tmp_path / "lake"))})
        record_finished_runs(instance, lake, None)
    rows = {r["step_key"]: r for r in C.read_costs(lake, {"run_id": run.run_id})}
    features = PRICES.storage.tiers[PRICES.storage.layers["features"]]
    assert rows["requests:features:put"]["quantity"] == 4.0  # 2 commits x (1 file + 1 log)
    assert rows["requests:features:get"]["quantity"] == 2.0  # version 1 has 2 files
    requests_usd = 4 / 1000 * features.put_per_1000 + 2 / 1000 * features.get_per_1000
    assert sum(r["usd"] for r in rows.values() if r["kind"] == "requests") == pytest.approx(
        requests_usd)
    [perception] = [r for r in C.report(lake, MONTH, "team") if r["team"] == "perception"]
    assert perception["requests_usd"] == pytest.approx(requests_usd)
    assert main(["costs", "report", "--month", MONTH, "--by", "kind",
                 "--lake", str(tmp_path / "lake")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-2:] == ["requests", "USD"]
    [line] = [x for x in out if x.startswith("requests ")]
    assert line.split()[-1] == f"{requests_usd:.6f}"
