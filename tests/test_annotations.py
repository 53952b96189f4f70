"""The annotation queue (robolake/annotations.py): tasks out in Label Studio's import format,
exactly once under concurrent runs, and Label Studio's JSON export back in as labels that
a dataset spec can select. Label Studio's own SDK (its labelling-config interface and its
export converter) checks the formats; no server is needed."""

from __future__ import annotations

import io
import json
import multiprocessing
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import simplejpeg
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from robolake import annotations, cleaned, raw
from robolake.datasets.build import build_dataset
from robolake.datasets.loader import load
from robolake.datasets.scenarios import SCENARIO_CLASSES, refresh_corner_cases
from robolake.datasets.spec import parse_spec
from robolake.settings import reset_settings
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table

DAY = "2026-11-20"
QUEUED = 24  # frames the tests queue (the highest-scored ones)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("annotations")
    simulate_fleet(tmp / "landing", robots=2, date=DAY, minutes=0.5, seed=11,
                   faults=["imu_spikes:0"], robot_types=["delivery"])
    lake = open_store(tmp / "lake")
    with pytest.MonkeyPatch.context() as env:  # brightness is decoded only where asked
        env.setenv("ROBOLAKE_CAMERA_BRIGHTNESS", "on")
        reset_settings()
        for part in raw.ingest_landing(open_store(tmp / "landing"), lake):
            cleaned.clean_partition(lake, *part)
    reset_settings()
    refresh_corner_cases(lake)
    return tmp / "lake"


def _threshold(lake) -> float:
    scores = sorted(read_table(lake, "features/corner_cases").column("corner_case_score")
                    .to_pylist(), reverse=True)
    assert scores[QUEUED - 1] > scores[QUEUED]  # a clean cut
    return scores[QUEUED - 1]


def _queue(lake_dir: str, threshold: float) -> list[str]:
    result = annotations.queue_corner_cases(open_store(lake_dir), threshold)
    return [t["data"]["task_id"] for t in result.tasks]


@pytest.fixture(scope="module")
def queued(lake_dir):
    """Two processes queue the same frames at once: each frame is queued exactly once."""
    lake = open_store(lake_dir)
    threshold = _threshold(lake)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.starmap(_queue, [(str(lake_dir), threshold)] * 2)
    assert not set(a) & set(b) and len(a) + len(b) == QUEUED
    tasks = []
    for key in sorted(p.relative_to(lake_dir) for p in (lake_dir / "annotations" / "tasks")
                      .glob("*.json")):
        tasks += json.loads(lake.read_bytes(str(key)))
    return threshold, tasks


def test_queue_writes_label_studio_tasks_with_media_and_context(lake_dir, queued):
    lake = open_store(lake_dir)
    threshold, tasks = queued
    table = pl.from_arrow(read_table(lake, annotations.QUEUE))
    assert table.height == QUEUED == len(tasks) and table["task_id"].n_unique() == QUEUED
    assert sorted(table["task_id"]) == sorted(t["data"]["task_id"] for t in tasks)
    config = lake.read_bytes("annotations/label_config.xml").decode()
    interface = LabelInterface(config)
    camera = pl.from_arrow(read_table(lake, cleaned.TABLES["camera"]))
    for task in tasks:
        data = task["data"]
        assert interface.validate_task(task), data["task_id"]
        assert data["corner_case_score"] >= round(threshold, 4) - 1e-4
        assert data["robot_id"] in data["context"] and data["scenario"] in data["context"]
        prefix = annotations.DEFAULT_URL_PREFIX
        jpeg = lake.read_bytes(data["camera"].removeprefix(prefix))
        frame = camera.filter(pl.col("upload_id") == data["upload_id"]).sort(
            (pl.col("ts_ns") - data["ts_ns"]).abs()).row(0, named=True)
        image = simplejpeg.decode_jpeg(jpeg, colorspace="GRAY")  # as the robot sent it
        assert image.shape[:2] == (frame["height"], frame["width"])
        assert abs(image.mean() - frame["brightness"]) < 2.0
        bev = np.asarray(Image.open(io.BytesIO(lake.read_bytes(
            data["lidar_bev"].removeprefix(prefix)))))
        assert bev.shape == (annotations.BEV_PIXELS,) * 2 and (bev > 0).sum() > 50
    # a later run queues nothing it queued before
    again = annotations.queue_corner_cases(lake, threshold)
    assert (again.tasks, again.already_queued, again.tasks_key) == ([], QUEUED, None)


def _annotation(aid: int, choice: str, created: str, note: str = "", **extra) -> dict:
    result = [{"id": f"r{aid}", "from_name": "scenario", "to_name": "camera",
               "type": "choices", "value": {"choices": [choice]}}]
    if note:
        result.append({"id": f"n{aid}", "from_name": "note", "to_name": "camera",
                       "type": "textarea", "value": {"text": [note]}})
    return {"id": aid, "completed_by": {"id": 7, "email": "ann@example.com"}, "result": result,
            "created_at": created, "updated_at": created, "lead_time": 3.5,
            "was_cancelled": False, **extra}


def _export(tasks: list[dict]) -> list[dict]:
    """A Label Studio JSON export of the project (its 'JSON' format)."""
    labels = SCENARIO_CLASSES
    out = []
    for i, task in enumerate(tasks):
        anns = [_annotation(100 + i, labels[i % len(labels)], "2026-12-01T10:00:00.000000Z",
                            note=f"frame {i}")]
        if i == 0:  # relabelled later: the newest annotation wins
            anns.append(_annotation(900, "sharp_turn", "2026-12-02T09:00:00.000000Z"))
        if i == 1:  # only a cancelled annotation: not a label
            anns = [_annotation(901, "nominal", "2026-12-01T11:00:00Z", was_cancelled=True)]
        out.append({"id": 1000 + i, "data": task["data"], "annotations": anns,
                    "predictions": [], "created_at": "2026-12-01T09:00:00Z"})
    out.append({"id": 5000, "data": {"task_id": "not-ours", "camera": "x"},
                "annotations": [_annotation(902, "nominal", "2026-12-01T10:00:00Z")]})
    bad = dict(out[2], id=5001, annotations=[_annotation(903, "alien", "2026-12-01T12:00:00Z")])
    out.append(bad)
    return out


def test_label_studio_export_imports_once_and_labels_a_dataset(lake_dir, queued, tmp_path):
    lake = open_store(lake_dir)
    _, tasks = queued
    export = _export(tasks[:12])
    interface = LabelInterface(annotations.LABEL_CONFIG)
    for task in export[:12]:
        for ann in task["annotations"]:
            assert interface.validate_annotation(ann)  # Label Studio's own schema check
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    first = annotations.import_annotations(lake, path)
    assert len(first.imported) == 11  # 12 tasks, one with only a cancelled annotation
    assert sorted(r.split(":")[0] for r in first.refused) == [
        "task 5000 (not-ours)", f"task 5001 ({tasks[2]['data']['task_id']})"]
    assert "'alien'" in first.refused[1] or "'alien'" in first.refused[0]
    rows = pl.from_arrow(read_table(lake, annotations.ANNOTATIONS)).sort("ts_ns")
    by_task = {r["task_id"]: r for r in rows.iter_rows(named=True)}
    assert len(by_task) == 11
    t0 = tasks[0]["data"]
    assert by_task[t0["task_id"]]["label"] == "sharp_turn"  # the newer annotation
    assert by_task[t0["task_id"]]["annotator"] == "ann@example.com"
    assert tasks[1]["data"]["task_id"] not in by_task
    t3 = tasks[3]["data"]
    assert (by_task[t3["task_id"]]["label"], by_task[t3["task_id"]]["note"],
            by_task[t3["task_id"]]["ts_ns"]) == (SCENARIO_CLASSES[3 % len(SCENARIO_CLASSES)],
                                                  "frame 3", t3["ts_ns"])
    again = annotations.import_annotations(lake, path)  # re-import: replaced, not duplicated
    assert again.version == first.version + 1
    assert read_table(lake, annotations.ANNOTATIONS).num_rows == 11

    spec = parse_spec({
        "name": "labelled", "version": "1.0.0",
        "sources": {"dates": {"start": DAY, "end": DAY}},
        "features": {"gps_trajectory": {"history": 3}},
        "labels": {"kind": "scenario", "source": "annotations"},
        "output": {"shard_size_mb": 1, "splits": {"train": 0.5, "val": 0.5, "test": 0.0}},
        "quality_gates": {"min_samples": 1, "max_missing_rate": 1.0},
        "privacy": "approved",
        "approval": {"by": "tests", "when": "2026-12-01",
                     "reason": "test data from the simulator"}})
    built = build_dataset(lake, spec)
    labelled = {(r["upload_id"], r["ts_ns"]): r["label"] for r in by_task.values()}
    seen = {}
    for split in ("train", "val"):
        for batch in load("labelled", "1.0.0", split, lake=lake):
            seen[batch["key"]] = (batch["upload_id"], SCENARIO_CLASSES[int(batch["label"])])
    # every sample is a labelled frame with its person-given class (edge frames may drop)
    assert 0 < len(seen) <= len(labelled) and sum(built.samples.values()) == len(seen)
    for key, (upload, label) in seen.items():
        ts = int(key.split("_")[1])
        assert labelled[(upload, ts)] == label


def test_spec_refuses_annotation_labels_for_ego_motion():
    with pytest.raises(ValueError, match="source: annotations labels scenarios"):
        parse_spec({"name": "x", "version": "1.0.0", "sources": {"dates": {"start": DAY}},
                    "features": {"gps_trajectory": {}},
                    "labels": {"kind": "ego_motion", "source": "annotations"},
                    "output": {"splits": {"train": 1.0, "val": 0.0, "test": 0.0}}})


def test_erasing_a_robot_removes_its_tasks_media_and_labels(lake_dir, queued, tmp_path):
    from robolake.governance.erase import erase_robot

    lake = open_store(lake_dir)
    _, tasks = queued
    # labels for both robots, whichever of this module's tests ran before on this worker
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_export(tasks)))
    assert annotations.import_annotations(lake, export).imported
    robot = tasks[0]["data"]["robot_id"]
    mine = [t["data"] for t in tasks if t["data"]["robot_id"] == robot]
    assert 0 < len(mine) < len(tasks)
    erase_robot(lake, robot, reason="GDPR request 42")
    for data in mine:
        assert not lake.exists(data["camera"].removeprefix(annotations.DEFAULT_URL_PREFIX))
    left = [t for p in (lake_dir / "annotations" / "tasks").glob("*.json")
            for t in json.loads(p.read_text())]
    assert len(left) == len(tasks) - len(mine) and robot not in json.dumps(left)
    for key in (annotations.QUEUE, annotations.ANNOTATIONS):
        rows = read_table(lake, key, columns=["robot_id"]).column("robot_id").to_pylist()
        assert rows and robot not in rows
