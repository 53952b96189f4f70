"""Notebooks as scheduled assets (robolake/notebooks.py, robolake_assets/notebooks.py): the
starter notebook runs against a real lake in a real kernel and its numbers match the
tables; a failing cell fails the run but keeps the notebook; bad folders and schedules are
refused naming the file and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import nbformat
import polars as pl
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from robolake import cleaned, raw
from robolake.notebooks import load_notebooks
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_assets.notebooks import build_notebook_layer
from robolake_resources.lake import LakeResource

REPO = Path(__file__).resolve().parents[1]
DAY = "2026-11-21"


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nb")
    simulate_fleet(tmp / "landing", robots=2, date=DAY, minutes=0.3, seed=5,
                   faults=["truncated:1"])
    lake = open_store(tmp / "lake")
    for part in raw.ingest_landing(open_store(tmp / "landing"), lake):
        cleaned.clean_partition(lake, *part)
    return tmp / "lake"


def _materialize(folder: Path, lake_dir: Path, parameters: dict) -> dg.ExecuteInProcessResult:
    assets, jobs, _ = build_notebook_layer(folder)
    return dg.materialize(
        assets, resources={"lake": LakeResource(root=str(lake_dir))}, raise_on_error=False,
        run_config={"ops": {assets[0].op.name: {"config": {"parameters": parameters}}}})


def test_starter_notebook_explores_a_day_of_the_lake(lake_dir: Path):
    result = _materialize(REPO / "notebooks", lake_dir, {"lake": str(lake_dir), "day": DAY})
    assert result.success
    [mat] = result.get_asset_materialization_events()
    meta = mat.materialization.metadata
    assert meta["figures"].value == 3  # IMU traces, GPS tracks, quality over the day
    html = Path(meta["html"].value)
    assert html.exists() and "GPS tracks" in html.read_text()
    assert (html.parent / "figure-01.png").read_bytes()[:4] == b"\x89PNG"
    lake = open_store(lake_dir)
    uploads = pl.from_arrow(read_table(lake, "raw/uploads"))
    aligned = read_table(lake, "cleaned/aligned_frames")
    assert meta["outputs"].value == {
        "day": DAY, "uploads": uploads.height, "robots": 1,  # the other's file is cut
        "usable_uploads": 1,
        "aligned_frames": aligned.num_rows,
        "imu_readings": read_table(lake, "cleaned/imu").num_rows}
    assert len(set(aligned.column("robot_id").to_pylist())) == 1 and aligned.num_rows > 100
    assert sorted(uploads["status"]) == ["accepted", "quarantined"]  # the cut file


def _notebook(folder: Path, name: str, *cells, tags=("parameters",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    first = new_code_cell("x = 1", metadata={"tags": list(tags)})
    path = folder / f"{name}.ipynb"
    nbformat.write(new_notebook(cells=[first, *(new_code_cell(c) for c in cells)]), path)
    return path


def test_a_failing_cell_fails_the_run_and_keeps_the_notebook(lake_dir: Path, tmp_path: Path):
    _notebook(tmp_path / "nbs", "broken", "y = x + 1", "raise ValueError(f'no data for {y}')")
    result = _materialize(tmp_path / "nbs", lake_dir, {"x": 41})
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    description = failure.user_failure_data.description
    # cell 4 of the executed notebook: papermill injects the run's parameters as cell 2
    assert "broken.ipynb: cell 4: ValueError: no data for 42" in description
    kept = list((lake_dir / "notebooks" / "broken").rglob("broken.html"))
    assert len(kept) == 1 and "no data for 42" in kept[0].read_text()


def test_schedules_and_refusals(tmp_path: Path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    shutil.copy(REPO / "notebooks" / "explore_day.ipynb", folder / "explore_day.ipynb")
    (folder / "schedules.yaml").write_text(
        "explore_day: {cron: '30 5 * * 1', parameters: {robot_type: delivery}, "
        "pool: cpu_on_demand}\n")
    assets, jobs, [schedule] = build_notebook_layer(folder)
    assert schedule.cron_schedule == "30 5 * * 1" and schedule.job.name == jobs[0].name
    [request] = schedule.evaluate_tick(dg.build_schedule_context()).run_requests
    assert request.run_config == {"ops": {"notebook_explore_day": {"config": {
        "parameters": {"robot_type": "delivery"}}}}}
    assert assets[0].op.pool == "cpu_on_demand"
    bad = {"nope: {cron: '0 6 * * *'}": "nope: not a notebook",
           "explore_day: {cron: '0 6 * *'}": "explore_day: cron '0 6 * *': expected five",
           "explore_day: {cron: '0 6 * * *', pool: tpu}": "pool 'tpu': expected one of",
           "explore_day: {cron: '0 6 * * *', when: daily}": "explore_day.when: unknown field"}
    for text, message in bad.items():
        (folder / "schedules.yaml").write_text(text + "\n")
        with pytest.raises(ValueError, match=message.replace("*", r"\*")):
            load_notebooks(folder)
    (folder / "schedules.yaml").unlink()
    _notebook(folder, "untagged", tags=())
    with pytest.raises(ValueError, match="untagged.ipynb: no cell tagged 'parameters'"):
        load_notebooks(folder)
    assert json.loads(json.dumps(load_notebooks(REPO / "notebooks")[1]["explore_day"]
                                 .model_dump()))["pool"] == "cpu_spot"
