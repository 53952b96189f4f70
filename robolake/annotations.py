"""The annotation queue: corner-case frames out to Label Studio, people's labels back in.

Out (`queue_corner_cases`): every scored frame (`features/corner_cases`) at or above a
corner-case score becomes one Label Studio task, once: the task id is a hash of (upload,
frame time), and `annotations/queue` (Delta, keyed by task_id) remembers what was queued.
Each task carries the camera frame nearest the LiDAR frame (the JPEG exactly as the robot
sent it, read from the raw recording through the camera table's payload reference), a
LiDAR bird's-eye PNG of the frame's point cloud, and its context (robot, time, scenario,
scores). Media go to `annotations/media/<upload_id>/<task_id>/`; a batch's tasks to
`annotations/tasks/<batch>.json` in Label Studio's import format, with the labelling
config beside them (`annotations/label_config.xml`, `LABEL_CONFIG`). Media URLs are
`url_prefix + lake key`: by default Label Studio's local-files route, so a Label Studio
whose `LOCAL_FILES_DOCUMENT_ROOT` is the lake serves them.

Back (`import_annotations`): a Label Studio JSON export, parsed by Label Studio's own
converter (`label_studio_sdk.converter.Converter`: the newest non-cancelled annotation of
each task first), becomes rows of `cleaned/annotations` (keyed by task_id: re-importing
replaces a task's label, never duplicates it). Every exported task gets a verdict: one
that Robolake did not queue, or whose choice is not a scenario class, is refused with the
task id and the reason. Dataset specs with `labels: {kind: scenario, source: annotations}`
take these labels (robolake/datasets/build.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from PIL import Image

from robolake.cleaned import TABLES
from robolake.datasets.scenarios import CORNER_CASES, SCENARIO_CLASSES, SCORE_COLUMNS
from robolake.decode import cloud_points, compressed_image_payload, iter_sensor_messages
from robolake.raw import RAW_UPLOADS
from robolake.storage import Store
from robolake.tables import append_new_rows, read_table, replace_rows

QUEUE = "annotations/queue"
MEDIA_PREFIX = "annotations/media"
TASKS_PREFIX = "annotations/tasks"
ANNOTATIONS = "cleaned/annotations"
DEFAULT_URL_PREFIX = "/data/local-files/?d="  # Label Studio's local-files route
BEV_RANGE_M = 40.0
BEV_PIXELS = 256

LABEL_CONFIG = f"""<View>
  <Header value="$context"/>
  <Image name="camera" value="$camera" zoom="true"/>
  <Image name="lidar_bev" value="$lidar_bev"/>
  <Choices name="scenario" toName="camera" choice="single" showInline="true" required="true">
{chr(10).join(f'    <Choice value="{c}"/>' for c in SCENARIO_CLASSES)}
  </Choices>
  <TextArea name="note" toName="camera" rows="2" maxSubmissions="1"/>
</View>
"""

QUEUE_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("upload_id", pa.string()), ("robot_id", pa.string()),
    ("robot_type", pa.string()), ("date", pa.string()), ("ts_ns", pa.int64()),
    ("corner_case_score", pa.float64()), ("scenario", pa.string()), ("batch", pa.string()),
    ("queued_ns", pa.int64())])
ANNOTATION_SCHEMA = pa.schema([
    ("task_id", pa.string()), ("upload_id", pa.string()), ("robot_id", pa.string()),
    ("robot_type", pa.string()), ("date", pa.string()), ("ts_ns", pa.int64()),
    ("label", pa.string()), ("note", pa.string()), ("annotator", pa.string()),
    ("annotation_id", pa.int64()), ("annotated_ns", pa.int64()), ("imported_ns", pa.int64())])


def task_id(upload_id: str, ts_ns: int) -> str:
    return hashlib.sha256(f"{upload_id}@{ts_ns}".encode()).hexdigest()[:24]


def bev_png(points: np.ndarray, range_m: float = BEV_RANGE_M, pixels: int = BEV_PIXELS) -> bytes:
    """A bird's-eye view of a point cloud: x up, y left, brighter where more points."""
    grid = np.zeros((pixels, pixels), np.float64)
    if len(points):
        ij = np.floor((points[:, :2] + range_m) / (2 * range_m) * pixels).astype(np.int64)
        ok = ((ij >= 0) & (ij < pixels)).all(axis=1)
        np.add.at(grid, (pixels - 1 - ij[ok, 0], pixels - 1 - ij[ok, 1]), 1.0)
    image = (255 * np.log1p(grid) / max(np.log1p(grid).max(), 1e-9)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image, mode="L").save(out, format="PNG")
    return out.getvalue()


@dataclass
class QueueResult:
    batch: str
    tasks: list[dict] = field(default_factory=list)
    tasks_key: str | None = None  # the batch's Label Studio import file in the lake
    already_queued: int = 0


def _candidates(lake: Store, threshold: float) -> pl.DataFrame:
    scored = read_table(lake, CORNER_CASES)
    if scored is None:
        return pl.DataFrame()
    frame = pl.from_arrow(scored)
    assert isinstance(frame, pl.DataFrame)
    frame = frame.filter(pl.col("corner_case_score") >= threshold)
    raw = pl.from_arrow(read_table(lake, RAW_UPLOADS, columns=["upload_id", "raw_key"]))
    return (frame.join(raw.unique("upload_id"), on="upload_id")
            .with_columns(pl.struct("upload_id", "ts_ns").map_elements(
                lambda r: task_id(r["upload_id"], r["ts_ns"]), return_dtype=pl.String)
                .alias("task_id"))
            .sort("upload_id", "ts_ns"))


def _payload_refs(lake: Store, upload_id: str, frames: pl.DataFrame) -> dict[str, list]:
    """(topic, log_ns) of each frame's camera image and LiDAR scan, or None."""
    out: dict[str, list] = {}
    for kind, ts_col, topic_col in (("camera", "camera_ts_ns", None),
                                    ("lidar", "ts_ns", "lidar_topic")):
        rows = pl.from_arrow(read_table(lake, TABLES[kind], filters={"upload_id": upload_id},
                                        columns=["topic", "ts_ns", "payload_ref"]))
        refs = {(r["topic"], r["ts_ns"]): r["payload_ref"] for r in rows.iter_rows(named=True)}
        by_ts = {ts: ref for (_, ts), ref in refs.items()}
        out[kind] = []
        for r in frames.iter_rows(named=True):
            ref = (refs.get((r[topic_col], r[ts_col])) if topic_col
                   else by_ts.get(r[ts_col]))
            topic, _, log_ns = ref.split("#", 1)[1].rpartition("@") if ref else (None, "", 0)
            out[kind].append((topic, int(log_ns)) if ref else None)
    return out


def _media(lake: Store, raw_key: str, refs: dict[str, list]) -> list[dict[str, bytes]]:
    """Each frame's camera image (as sent) and LiDAR BEV PNG, read in one pass."""
    wanted = {ref for kind in refs for ref in refs[kind] if ref}
    found = {}
    with lake.local_path(raw_key) as path:
        for topic, _type, log_ns, data, encoding in iter_sensor_messages(path):
            if (topic, log_ns) in wanted:
                found[(topic, log_ns)] = (data, encoding)
    out = []
    for camera, lidar in zip(refs["camera"], refs["lidar"], strict=True):
        media = {}
        if camera in found:
            media["camera"] = compressed_image_payload(*found[camera])[1]
        if lidar in found:
            media["lidar_bev"] = bev_png(cloud_points(*found[lidar]))
        out.append(media)
    return out


def _image_name(kind: str, data: bytes) -> str:
    if kind == "lidar_bev" or data.startswith(b"\x89PNG"):
        return f"{kind}.png"
    return f"{kind}.jpg"


def _task(row: dict, media: dict[str, bytes], keys: dict[str, str], url_prefix: str) -> dict:
    when = datetime.fromtimestamp(row["ts_ns"] / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    context = (f"{row['robot_id']} ({row['robot_type']}, {row['region']}) at {when} UTC: "
               f"scenario {row['scenario']}, corner-case score {row['corner_case_score']:.2f}")
    data = {"task_id": row["task_id"], "context": context, "upload_id": row["upload_id"],
            "robot_id": row["robot_id"], "robot_type": row["robot_type"], "date": row["date"],
            "ts_ns": row["ts_ns"], "scenario": row["scenario"],
            "corner_case_score": round(row["corner_case_score"], 4),
            **{c: round(row[c], 4) for c in SCORE_COLUMNS if c in row}}
    for kind in media:
        data[kind] = url_prefix + keys[kind]
    return {"data": data}


def queue_corner_cases(lake: Store, threshold: float, limit: int | None = None,
                       url_prefix: str = DEFAULT_URL_PREFIX, log=lambda _m: None) -> QueueResult:
    """Queue the scored frames at or above `threshold` that are not queued yet (at most
    `limit`, highest scores first); see the module docstring."""
    batch = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**9:09d}"
    result = QueueResult(batch)
    candidates = _candidates(lake, threshold)
    if candidates.is_empty():
        return result
    queued = read_table(lake, QUEUE, columns=["task_id"])
    done = set(queued.column("task_id").to_pylist()) if queued is not None else set()
    fresh = candidates.filter(~pl.col("task_id").is_in(list(done)))
    result.already_queued = candidates.height - fresh.height
    if limit is not None:
        fresh = fresh.sort("corner_case_score", descending=True).head(limit).sort("upload_id",
                                                                                   "ts_ns")
    rows = []
    for (upload_id,), frames in fresh.partition_by("upload_id", as_dict=True,
                                                   maintain_order=True).items():
        media = _media(lake, frames["raw_key"][0], _payload_refs(lake, upload_id, frames))
        for row, files in zip(frames.iter_rows(named=True), media, strict=True):
            # under the upload: a GDPR erase of its robot finds them (governance/erase.py)
            keys = {kind: f"{MEDIA_PREFIX}/{upload_id}/{row['task_id']}/"
                          f"{_image_name(kind, data)}" for kind, data in files.items()}
            for kind, data in files.items():
                lake.write_bytes(keys[kind], data)
            result.tasks.append(_task(row, files, keys, url_prefix))
            rows.append({**{k: row[k] for k in QUEUE_SCHEMA.names if k in row},
                         "batch": batch, "queued_ns": time.time_ns()})
        log(f"{upload_id[:12]}: {frames.height} frame(s) queued")
    if not rows:
        return result
    # the queue table decides: a concurrent run that queued some of these first keeps them
    _, written = append_new_rows(lake, QUEUE, rows, QUEUE_SCHEMA, keys=["task_id"])
    mine = {r["task_id"] for r in written}
    result.tasks = [t for t in result.tasks if t["data"]["task_id"] in mine]
    if result.tasks:
        lake.write_bytes("annotations/label_config.xml", LABEL_CONFIG.encode())
        result.tasks_key = f"{TASKS_PREFIX}/{batch}.json"
        lake.write_bytes(result.tasks_key, json.dumps(result.tasks, indent=1).encode())
    return result


# --------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    imported: list[dict] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # the reason, naming the task
    version: int | None = None


def _verdict(item: dict, queued: dict[str, dict]) -> tuple[dict | None, str]:
    task = item["input"].get("task_id")
    if task not in queued:
        return None, f"task {item.get('id')} ({task or 'no task_id'}): not queued by Robolake"
    choices = [c for v in item["output"].get("scenario", []) for c in v.get("choices", [])]
    if len(choices) != 1 or choices[0] not in SCENARIO_CLASSES:
        return None, (f"task {item.get('id')} ({task}): scenario choice {choices!r} is not one "
                      f"of {', '.join(SCENARIO_CLASSES)}")
    notes = [t for v in item["output"].get("note", []) for t in v.get("text", [])]
    created = item.get("created_at")
    annotated = (int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() * 1e9)
                 if created else 0)
    who = item.get("completed_by")
    annotator = str(who.get("email") or who.get("id")) if isinstance(who, dict) else str(who)
    row = {k: queued[task][k] for k in ("task_id", "upload_id", "robot_id", "robot_type",
                                        "date", "ts_ns")}
    return {**row, "label": choices[0], "note": " ".join(notes), "annotator": annotator,
            "annotation_id": item.get("annotation_id"), "annotated_ns": annotated,
            "imported_ns": time.time_ns()}, ""


def import_annotations(lake: Store, export: Path) -> ImportResult:
    """Label Studio's JSON export of the queue's project into `cleaned/annotations`."""
    from label_studio_sdk.converter import Converter  # heavy: only when importing

    result = ImportResult()
    queued_table = read_table(lake, QUEUE)
    queued = ({r["task_id"]: r for r in queued_table.to_pylist()} if queued_table is not None
              else {})
    seen: set[str] = set()
    for item in Converter(LABEL_CONFIG, project_dir=None).iter_from_json_file(str(export)):
        if not item.get("output"):
            continue  # a task nobody labelled yet
        row, reason = _verdict(item, queued)
        if row is None:
            result.refused.append(reason)
        elif row["task_id"] not in seen:  # the newest annotation of a task comes first
            seen.add(row["task_id"])
            result.imported.append(row)
    if result.imported:
        result.version = replace_rows(lake, ANNOTATIONS,
                                      pa.Table.from_pylist(result.imported, ANNOTATION_SCHEMA),
                                      "task_id", sorted(seen))
    return result


def erase_robot_tasks(lake: Store, robot_id: str, start: str | None = None,
                      end: str | None = None) -> list[str]:
    """Drop a robot's tasks (of days start..end) from the queue's Label Studio import files
    (a GDPR erase; its rows and media go with the tables and its uploads' files). Returns
    the files rewritten."""
    def erased(data: dict) -> bool:
        # by the frame's own time (a task of a recording crossing midnight: its frame's day)
        day = (datetime.fromtimestamp(data["ts_ns"] / 1e9, UTC).strftime("%Y-%m-%d")
               if data.get("ts_ns") is not None else data.get("date", ""))
        return (data.get("robot_id") == robot_id and (start is None or day >= start)
                and (end is None or day <= end))

    changed = []
    for info in lake.list(f"{TASKS_PREFIX}/"):
        tasks = json.loads(lake.read_bytes(info.key))
        kept = [t for t in tasks if not erased(t["data"])]
        if len(kept) != len(tasks):
            lake.write_bytes(info.key, json.dumps(kept, indent=1).encode())
            changed.append(info.key)
    return changed
