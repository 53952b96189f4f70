"""The cleaned layer: cleaning rules, clock correction, alignment to LiDAR, quality.

Everything works on columns (numpy arrays / polars frames) for one upload at
a time; the local engine (`clean_partition`) and the Spark engine
(`robolake/spark_engine.py`, one task per upload through `clean_one`) call these
functions unchanged.
Rules are the data contract's (see DESIGN.md) and each counts what it removed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from robolake.contract import (
    CAMERA_MATCH_NS,
    IMU_HALF_WINDOW_NS,
    IMU_OUTLIER_NORM,
    MAX_DUPLICATE_RATE,
    MAX_GAP_S,
    MAX_LATENCY_S,
    MAX_NULL_RATE,
    MAX_OUTLIER_RATE,
    USABLE_STATUSES,
    primary_topic_rows,
)
from robolake.decode import Decoded, decode_recording, decode_workers
from robolake.errors import is_transient
from robolake.raw import RAW_UPLOADS
from robolake.tables import (
    Between,
    FileCommit,
    Snapshot,
    commit_files,
    read_table,
    replace_files,
    replace_rows,
    write_part_files,
)

CLOCK_OFFSET_MIN_NS = 500_000_000  # sensor stamps this far from log times: clock is off
CLOCK_CONSTANT_SPREAD_NS = 20_000_000  # offsets within this band (p5..p95): constant, corrected

IDENTITY = ("robot_id", "robot_type", "region", "upload_id")
PARTITION_BY = ["date", "robot_type", "region"]


@dataclass(frozen=True)
class Upload:
    upload_id: str
    robot_id: str
    robot_type: str
    region: str
    raw_key: str
    arrived_ns: int


@dataclass
class Cleaned:
    imu: pl.DataFrame
    gps: pl.DataFrame
    lidar: pl.DataFrame
    camera: pl.DataFrame
    aligned: pl.DataFrame
    report: dict
    counts: dict[str, int] = field(default_factory=dict)


def utc_date_expr(col: str = "ts_ns") -> pl.Expr:
    return pl.from_epoch(pl.col(col), time_unit="ns").dt.strftime("%Y-%m-%d").alias("date")


# --------------------------------------------------------------------------- clock


@dataclass(frozen=True)
class ClockCheck:
    offset_ns: int  # median(sensor stamp - log time)
    spread_ns: int  # p95 - p5 of the offsets
    corrected: bool
    note: str


def check_clock(decoded: Decoded) -> ClockCheck:
    """Detect a recorder/sensor clock disagreement; correct it when the offset is constant."""
    offsets = [(c["stamp_ns"] - c["log_ns"])[c["stamp_ns"] != 0]
               for c in (decoded.imu, decoded.gps, decoded.lidar, decoded.camera) if c]
    allx = np.concatenate(offsets) if offsets else np.empty(0, dtype=np.int64)
    if allx.size == 0:
        return ClockCheck(0, 0, False, "no sensor stamps")
    offset = int(np.median(allx))
    p5, p95 = np.percentile(allx, [5, 95])
    spread = int(p95 - p5)
    if abs(offset) < CLOCK_OFFSET_MIN_NS:
        return ClockCheck(offset, spread, False, "clock ok")
    if spread <= CLOCK_CONSTANT_SPREAD_NS:
        return ClockCheck(offset, spread, True,
                          f"sensor clock off by a constant {offset / 1e9:+.3f} s: corrected")
    return ClockCheck(offset, spread, False,
                      f"sensor clock off by {offset / 1e9:+.3f} s and drifting (spread "
                      f"{spread / 1e9:.3f} s): log times used")


def _event_time(cols: dict[str, np.ndarray], clock: ClockCheck) -> np.ndarray:
    stamp, log = cols["stamp_ns"], cols["log_ns"]
    if clock.corrected:
        ts = stamp - clock.offset_ns
    elif abs(clock.offset_ns) >= CLOCK_OFFSET_MIN_NS:
        ts = log.copy()
    else:
        ts = stamp.copy()
    return np.where(stamp == 0, log, ts)  # unset header stamps fall back to the log time


# --------------------------------------------------------------------------- cleaning rules


def _frame(cols: dict[str, np.ndarray], clock: ClockCheck, upload: Upload,
           schema: dict[str, pl.DataType], payload_ref: str = "") -> pl.DataFrame:
    if not cols:
        return pl.DataFrame(schema=schema)
    data = {k: v for k, v in cols.items() if k in schema and k not in ("ts_ns", "date")}
    data["ts_ns"] = _event_time(cols, clock)
    refs = ([pl.concat_str(pl.lit(f"{payload_ref}#"), "topic", pl.lit("@"),
                           pl.col("log_ns").cast(pl.String)).alias("payload_ref")]
            if "payload_ref" in schema else [])  # where the payload lies in the raw copy
    frame = pl.DataFrame(data).with_columns(
        pl.lit(upload.robot_id).alias("robot_id"), pl.lit(upload.robot_type).alias("robot_type"),
        pl.lit(upload.region).alias("region"), pl.lit(upload.upload_id).alias("upload_id"),
        utc_date_expr(), *refs)
    return frame.select([pl.col(k).cast(t) for k, t in schema.items()])


def _dedupe(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Exact duplicates (same robot, sensor topic, timestamp and values): keep the first.

    Values are compared too because real sensors split one scan into several
    messages with one stamp (the SICK radar clouds do); those are not duplicates.
    """
    subset = [c for c in frame.columns if c not in ("log_ns", "payload_ref")]
    out = frame.unique(subset=subset, keep="first", maintain_order=True)
    return out, frame.height - out.height


_ID_SCHEMA = {"robot_id": pl.String, "robot_type": pl.String, "region": pl.String,
              "date": pl.String, "upload_id": pl.String, "topic": pl.String,
              "ts_ns": pl.Int64, "log_ns": pl.Int64}
IMU_SCHEMA = {**_ID_SCHEMA, **{k: pl.Float64 for k in
                               ("ax", "ay", "az", "gx", "gy", "gz", "qx", "qy", "qz", "qw")}}
GPS_SCHEMA = {**_ID_SCHEMA, "lat": pl.Float64, "lon": pl.Float64, "alt": pl.Float64,
              "status": pl.Int16}
LIDAR_SCHEMA = {**_ID_SCHEMA, "points_total": pl.Int64, "points_kept": pl.Int64,
                "points_far": pl.Int64, "range_min_m": pl.Float64, "range_mean_m": pl.Float64,
                "range_max_m": pl.Float64, "payload_ref": pl.String}
CAMERA_SCHEMA = {**_ID_SCHEMA, "bytes": pl.Int64, "width": pl.Int32, "height": pl.Int32,
                 "brightness": pl.Float64, "is_black": pl.Boolean, "payload_ref": pl.String}
ALIGNED_SCHEMA = {
    "robot_id": pl.String, "robot_type": pl.String, "region": pl.String, "date": pl.String,
    "upload_id": pl.String, "lidar_topic": pl.String, "ts_ns": pl.Int64,
    "camera_ts_ns": pl.Int64, "camera_dt_ms": pl.Float64,
    "imu_ax": pl.Float64, "imu_ay": pl.Float64, "imu_az": pl.Float64,
    "imu_gx": pl.Float64, "imu_gy": pl.Float64, "imu_gz": pl.Float64, "imu_count": pl.Int64,
    "gps_lat": pl.Float64, "gps_lon": pl.Float64, "gps_alt": pl.Float64,
    "lidar_points": pl.Int64,
}


def clean_imu(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    frame, dups = _dedupe(frame)
    norm = (pl.col("ax") ** 2 + pl.col("ay") ** 2 + pl.col("az") ** 2).sqrt()
    kept = frame.filter(norm <= IMU_OUTLIER_NORM)  # NaN norms fail too: removed as outliers
    return kept, {"imu_samples": frame.height + dups, "imu_duplicates": dups,
                  "imu_outliers": frame.height - kept.height}


def clean_gps(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    frame, dups = _dedupe(frame)
    valid = ((pl.col("status") >= 0) & pl.col("lat").is_not_nan() & pl.col("lon").is_not_nan()
             & pl.col("alt").is_not_nan())
    kept = frame.filter(valid)
    return kept, {"gps_fixes": frame.height + dups, "gps_duplicates": dups,
                  "gps_invalid": frame.height - kept.height}


def clean_lidar(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    frame, dups = _dedupe(frame)
    return frame, {"lidar_frames": frame.height + dups, "lidar_duplicates": dups,
                   "lidar_points_far": int(frame["points_far"].sum() or 0)}


def clean_camera(frame: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    frame, dups = _dedupe(frame)
    return frame, {"camera_frames": frame.height + dups, "camera_duplicates": dups,
                   "camera_black": int(frame["is_black"].sum() or 0)}


# --------------------------------------------------------------------------- alignment


def _primary(frame: pl.DataFrame) -> pl.DataFrame:
    return primary_topic_rows(frame).sort("ts_ns")


def nearest_within(ref: np.ndarray, t: np.ndarray, max_abs: int) -> np.ndarray:
    """Index into sorted `ref` of the nearest value to each t, -1 if none with |dt| < max_abs.

    Ties go to the earlier frame.
    """
    if ref.size == 0:
        return np.full(t.shape, -1, dtype=np.int64)
    right = np.searchsorted(ref, t, side="left").clip(0, ref.size - 1)
    left = (right - 1).clip(0, ref.size - 1)
    d_left, d_right = np.abs(ref[left] - t), np.abs(ref[right] - t)
    best = np.where(d_left <= d_right, left, right)
    return np.where(np.abs(ref[best] - t) < max_abs, best, -1)


def window_means(ts: np.ndarray, values: np.ndarray, t: np.ndarray,
                 half: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `values` rows with t - half <= ts < t + half, and the count (ts sorted)."""
    lo = np.searchsorted(ts, t - half, side="left")
    hi = np.searchsorted(ts, t + half, side="left")
    count = hi - lo
    csum = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (csum[hi] - csum[lo]) / count[:, None]
    means[count == 0] = np.nan
    return means, count


def interpolate_inside(ts: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation between bracketing samples; NaN outside [ts[0], ts[-1]]."""
    out = np.full((t.size, values.shape[1]), np.nan)
    if ts.size == 0:
        return out
    inside = (t >= ts[0]) & (t <= ts[-1])
    x = (t[inside] - ts[0]).astype(np.float64)  # relative ns keep float64 precise
    xp = (ts - ts[0]).astype(np.float64)
    for j in range(values.shape[1]):
        out[inside, j] = np.interp(x, xp, values[:, j])
    return out


def align_arrays(lidar_ts: np.ndarray, camera_ts: np.ndarray, imu_ts: np.ndarray,
                 imu_values: np.ndarray, gps_ts: np.ndarray,
                 gps_values: np.ndarray) -> dict[str, np.ndarray]:
    """The contract's alignment on sorted arrays (camera frames already without black ones)."""
    cam = nearest_within(camera_ts, lidar_ts, CAMERA_MATCH_NS)
    has_cam = cam >= 0
    cam_ts = np.where(has_cam, camera_ts[cam.clip(0)] if camera_ts.size else 0, 0)
    imu_mean, imu_count = window_means(imu_ts, imu_values, lidar_ts, IMU_HALF_WINDOW_NS)
    gps = interpolate_inside(gps_ts, gps_values, lidar_ts)
    return {"camera_ts_ns": cam_ts, "has_camera": has_cam,
            "camera_dt_ms": (cam_ts - lidar_ts) / 1e6, "imu": imu_mean,
            "imu_count": imu_count, "gps": gps}


def align_to_lidar(lidar: pl.DataFrame, camera: pl.DataFrame, imu: pl.DataFrame,
                   gps: pl.DataFrame) -> pl.DataFrame:
    """One row per LiDAR frame with the nearest camera frame, IMU means and GPS position."""
    if lidar.is_empty():
        return pl.DataFrame(schema=ALIGNED_SCHEMA)
    cam = _primary(camera.filter(~pl.col("is_black"))) if not camera.is_empty() else camera
    imu_p, gps_p = _primary(imu), _primary(gps)
    imu_cols = ["ax", "ay", "az", "gx", "gy", "gz"]
    parts = []
    for _, frames in lidar.sort("ts_ns").group_by("topic", maintain_order=True):
        t = frames["ts_ns"].to_numpy()
        a = align_arrays(
            t,
            cam["ts_ns"].to_numpy() if not cam.is_empty() else np.empty(0, np.int64),
            imu_p["ts_ns"].to_numpy() if not imu_p.is_empty() else np.empty(0, np.int64),
            imu_p.select(imu_cols).to_numpy() if not imu_p.is_empty() else np.empty((0, 6)),
            gps_p["ts_ns"].to_numpy() if not gps_p.is_empty() else np.empty(0, np.int64),
            gps_p.select(["lat", "lon", "alt"]).to_numpy() if not gps_p.is_empty()
            else np.empty((0, 3)))
        parts.append(frames.select(
            "robot_id", "robot_type", "region", "date", "upload_id",
            pl.col("topic").alias("lidar_topic"), "ts_ns",
        ).with_columns(
            pl.when(pl.Series(a["has_camera"])).then(pl.Series(a["camera_ts_ns"]))
            .otherwise(None).alias("camera_ts_ns"),
            pl.when(pl.Series(a["has_camera"])).then(pl.Series(a["camera_dt_ms"]))
            .otherwise(None).alias("camera_dt_ms"),
            *[pl.Series(f"imu_{c}", a["imu"][:, i]).fill_nan(None)
              for i, c in enumerate(imu_cols)],
            pl.Series("imu_count", a["imu_count"]),
            *[pl.Series(f"gps_{c}", a["gps"][:, i]).fill_nan(None)
              for i, c in enumerate(("lat", "lon", "alt"))],
            frames["points_kept"].alias("lidar_points"),
        ))
    return pl.concat(parts).select([pl.col(k).cast(t) for k, t in ALIGNED_SCHEMA.items()])


# --------------------------------------------------------------------------- quality


def max_gap_s(*frames: pl.DataFrame) -> float:
    gaps = [0.0]
    for frame in frames:
        if frame.height > 1:
            g = (frame.sort("ts_ns").group_by("topic")
                 .agg(pl.col("ts_ns").diff().max().alias("gap")))["gap"].max()
            if g is not None:
                gaps.append(g / 1e9)
    return max(gaps)


def null_rate(aligned: pl.DataFrame, present: dict[str, bool]) -> float:
    """Share of missing cells among the aligned columns whose sensor the recording has."""
    cols = [c for c, kind in (("camera_ts_ns", "camera"), ("imu_ax", "imu"), ("gps_lat", "gps"))
            if present[kind]]
    if aligned.is_empty() or not cols:
        return 0.0
    nulls = sum(aligned[c].null_count() for c in cols)
    return nulls / (aligned.height * len(cols))


def quality_row(upload: Upload, day: str, counts: dict[str, int], clock: ClockCheck,
                aligned: pl.DataFrame, present: dict[str, bool], gap_s: float,
                cleaned_ns: int, notes: list[str]) -> dict:
    total = sum(counts.get(k, 0) for k in ("imu_samples", "gps_fixes", "lidar_frames",
                                            "camera_frames"))
    dups = sum(counts.get(k, 0) for k in ("imu_duplicates", "gps_duplicates",
                                           "lidar_duplicates", "camera_duplicates"))
    return {
        "upload_id": upload.upload_id, "robot_id": upload.robot_id,
        "robot_type": upload.robot_type, "region": upload.region, "date": day,
        **{k: int(counts.get(k, 0)) for k in COUNT_COLUMNS},
        "aligned_frames": aligned.height,
        "clock_offset_ns": clock.offset_ns, "clock_corrected": clock.corrected,
        "null_rate": null_rate(aligned, present),
        "outlier_rate": counts.get("imu_outliers", 0) / max(counts.get("imu_samples", 0), 1),
        "duplicate_rate": dups / max(total, 1),
        "max_gap_s": gap_s,
        "latency_s": (cleaned_ns - upload.arrived_ns) / 1e9,
        "cleaned_ns": cleaned_ns,
        "notes": [clock.note, *notes],
    }


# rows of a kind that another upload of the robot already holds (same topic and time)
OVERLAP_COLUMNS = ("imu_overlap", "gps_overlap", "lidar_overlap", "camera_overlap",
                   "aligned_overlap")
COUNT_COLUMNS = ("imu_samples", "imu_duplicates", "imu_outliers", "gps_fixes", "gps_duplicates",
                 "gps_invalid", "lidar_frames", "lidar_duplicates", "lidar_points_far",
                 "camera_frames", "camera_duplicates", "camera_black", *OVERLAP_COLUMNS)
REPORT_SCHEMA = {
    "upload_id": pl.String, "robot_id": pl.String, "robot_type": pl.String,
    "region": pl.String, "date": pl.String, **{k: pl.Int64 for k in COUNT_COLUMNS},
    "aligned_frames": pl.Int64, "clock_offset_ns": pl.Int64, "clock_corrected": pl.Boolean,
    "null_rate": pl.Float64, "outlier_rate": pl.Float64, "duplicate_rate": pl.Float64,
    "max_gap_s": pl.Float64, "latency_s": pl.Float64, "cleaned_ns": pl.Int64,
    "notes": pl.List(pl.String),
}


def clean_decoded(decoded: Decoded, upload: Upload, day: str,
                  cleaned_ns: int | None = None) -> Cleaned:
    """Apply the contract's rules to one decoded upload and align it to its LiDAR frames."""
    clock = check_clock(decoded)
    imu, c_imu = clean_imu(_frame(decoded.imu, clock, upload, IMU_SCHEMA))
    gps, c_gps = clean_gps(_frame(decoded.gps, clock, upload, GPS_SCHEMA))
    lidar, c_lidar = clean_lidar(_frame(decoded.lidar, clock, upload, LIDAR_SCHEMA,
                                        decoded.payload_ref))
    camera, c_cam = clean_camera(_frame(decoded.camera, clock, upload, CAMERA_SCHEMA,
                                        decoded.payload_ref))
    counts = {**c_imu, **c_gps, **c_lidar, **c_cam}
    aligned = align_to_lidar(lidar, camera, imu, gps)
    present = {"imu": not imu.is_empty(), "gps": not gps.is_empty(),
               "camera": not camera.is_empty()}
    notes = [] if not lidar.is_empty() else ["no LiDAR: no aligned frames"]
    report = quality_row(upload, day, counts, clock, aligned, present,
                         # GPS is left out: its nominal 1 Hz period equals the 1 s threshold;
                         # fix dropouts are counted as gps_invalid instead
                         max_gap_s(imu, lidar, camera), cleaned_ns or time.time_ns(), notes)
    return Cleaned(imu, gps, lidar, camera, aligned, report, counts)


def clean_upload(path: Path, upload: Upload, day: str, cleaned_ns: int | None = None,
                 workers: int | None = None) -> Cleaned:
    """`workers`: decode processes (None: ROBOLAKE_DECODE_WORKERS, see decode_recording)."""
    return clean_decoded(decode_recording(path, upload.raw_key, workers), upload, day,
                         cleaned_ns)


def check_report(report: dict) -> dict[str, bool]:
    """Which quality thresholds a (per-upload or per-partition) report meets."""
    return {
        "null_rate": report["null_rate"] < MAX_NULL_RATE,
        "outlier_rate": report["outlier_rate"] < MAX_OUTLIER_RATE,
        "max_gap": report["max_gap_s"] < MAX_GAP_S,
        "duplicate_rate": report["duplicate_rate"] < MAX_DUPLICATE_RATE,
        "latency": report["latency_s"] < MAX_LATENCY_S,
    }


def partition_report(reports: list[dict]) -> dict:
    """A partition's metrics from its uploads' reports (weighted where it matters)."""
    if not reports:
        return {"null_rate": 0.0, "outlier_rate": 0.0, "duplicate_rate": 0.0, "max_gap_s": 0.0,
                "latency_s": 0.0, "uploads": 0, "aligned_frames": 0}
    frames = sum(r["aligned_frames"] for r in reports)
    samples = sum(r["imu_samples"] for r in reports)
    messages = sum(r["imu_samples"] + r["gps_fixes"] + r["lidar_frames"] + r["camera_frames"]
                   for r in reports)
    dups = sum(r["imu_duplicates"] + r["gps_duplicates"] + r["lidar_duplicates"]
               + r["camera_duplicates"] for r in reports)
    return {
        "uploads": len(reports),
        "aligned_frames": frames,
        "null_rate": (sum(r["null_rate"] * r["aligned_frames"] for r in reports) / frames
                      if frames else 0.0),
        "outlier_rate": sum(r["imu_outliers"] for r in reports) / max(samples, 1),
        "duplicate_rate": dups / max(messages, 1),
        "max_gap_s": max(r["max_gap_s"] for r in reports),
        "latency_s": max(r["latency_s"] for r in reports),
    }


# --------------------------------------------------------------------------- a partition

TABLES = {
    "imu": "cleaned/imu",
    "gps": "cleaned/gps",
    "lidar": "cleaned/lidar",
    "camera": "cleaned/camera_frames",
    "aligned": "cleaned/aligned_frames",
    "report": "cleaned/quality_reports",
}
SCHEMAS = {"imu": IMU_SCHEMA, "gps": GPS_SCHEMA, "lidar": LIDAR_SCHEMA, "camera": CAMERA_SCHEMA,
           "aligned": ALIGNED_SCHEMA, "report": REPORT_SCHEMA}
DECODABLE_FORMATS = ("mcap", "bag")


@dataclass
class PartitionResult:
    day: str
    robot_type: str
    uploads: list[Upload]  # cleaned by this run
    # table kind -> the rows this run wrote (the task engines' are read from their part
    # files only when asked for: spark_engine.CommittedRows)
    frames: Mapping[str, pl.DataFrame]
    versions: dict[str, int]  # table -> Delta version after the write
    reports: list[dict]  # this run's uploads'
    counts: dict[str, int]
    # every cleaned upload of the partition, those of earlier runs included
    partition_reports: list[dict]
    processes: int = 1  # the uploads were cleaned in this many processes, one upload each

    @property
    def metrics(self) -> dict:
        return partition_report(self.partition_reports)


def _usable_uploads(lake, day: str, robot_type: str) -> list[dict]:
    table = read_table(lake, RAW_UPLOADS, filters={"date": day, "robot_type": robot_type})
    if table is None:
        return []
    rows = sorted((r for r in table.to_pylist() if r["status"] in USABLE_STATUSES),
                  key=lambda r: (r["ingested_ns"], r["start_ns"], r["upload_id"]))
    unique = {r["upload_id"]: r for r in reversed(rows)}  # one per upload, the first indexed
    return sorted(unique.values(), key=rows.index)


def _upload(r: dict) -> Upload:
    return Upload(r["upload_id"], r["robot_id"], r["robot_type"], r["region"], r["raw_key"],
                  r["arrived_ns"])


def partition_uploads(lake, day: str, robot_type: str) -> list[tuple[Upload, str]]:
    """The partition's uploads that later layers use (accepted or flagged), with formats,
    in the order they arrived in the lake (the first of two overlapping uploads wins)."""
    return [(_upload(r), r["format"]) for r in _usable_uploads(lake, day, robot_type)]


RECLEAN_TAG = "robolake/reclean"  # a run tagged "true" cleans every upload again


@dataclass(frozen=True)
class CleaningPlan:
    """What one run of a (date, robot_type) partition cleans.

    An upload is cleaned once: its quality report, written after its rows, marks it
    done, so a run cleans only the uploads without one (new arrivals, or one whose run
    died before writing its report) and a day's many runs never decode a recording
    twice. `reclean` cleans them all again (a backfill after a rule change). Rows that
    uploads cleaned earlier hold win over a new upload's (overlap: kept the first).
    """

    todo: list[tuple[Upload, str]]  # (upload, format) in arrival order
    sizes: dict[str, int]  # upload_id -> bytes of its raw copy
    earlier: dict[str, dict]  # upload_id -> quality report, of every upload cleaned before
    order: list[str]  # every usable upload of the partition, in arrival order

    @property
    def input_bytes(self) -> int:
        return sum(self.sizes[u.upload_id] for u, _ in self.todo)

    def cleaned_ns(self, upload_id: str) -> int:
        """When the upload was first cleaned: cleaning it again keeps that time, so its
        latency is measured once (and identical runs write identical reports)."""
        report = self.earlier.get(upload_id)
        return report["cleaned_ns"] if report else time.time_ns()

    def partition_reports(self, reports: list[dict]) -> list[dict]:
        """The partition's reports once a run wrote `reports`, in arrival order."""
        new = {r["upload_id"]: r for r in reports}
        return [new.get(u) or self.earlier[u] for u in self.order
                if u in new or u in self.earlier]


def plan_cleaning(lake, day: str, robot_type: str, reclean: bool = False) -> CleaningPlan:
    rows = _usable_uploads(lake, day, robot_type)
    ids = [r["upload_id"] for r in rows]
    earlier: dict[str, dict] = {}
    reports = read_table(lake, TABLES["report"], filters={"robot_type": robot_type,
                                                           "upload_id": ids}) if ids else None
    for r in reports.to_pylist() if reports is not None else []:
        earlier[r["upload_id"]] = r
    todo = [(_upload(r), r["format"]) for r in rows
            if reclean or r["upload_id"] not in earlier]
    return CleaningPlan(todo, {r["upload_id"]: int(r["size_bytes"] or 0) for r in rows},
                        earlier, ids)


def _empty_report(upload: Upload, day: str, cleaned_ns: int, note: str) -> dict:
    empty = pl.DataFrame(schema=ALIGNED_SCHEMA)
    return quality_row(upload, day, {}, ClockCheck(0, 0, False, note), empty,
                       {"imu": False, "gps": False, "camera": False}, 0.0, cleaned_ns, [])


def drop_overlap(frame: pl.DataFrame, existing: pl.DataFrame, topic: str,
                 order: list[str]) -> tuple[pl.DataFrame, dict[str, int]]:
    """Rows whose (robot_id, topic, ts_ns) another upload already holds are dropped: rows
    in `existing` (other uploads in the table) win, then uploads earlier in `order`.

    Within one upload nothing is dropped here (a sensor may split one scan into several
    messages with one stamp; exact duplicates went in cleaning). Returns the kept rows
    and how many were dropped per upload_id.
    """
    keys = ["robot_id", topic, "ts_ns"]
    if frame.is_empty() or (existing.is_empty() and frame["upload_id"].n_unique() < 2):
        return frame, {}
    rank = {u: i for i, u in enumerate(order)}
    ranked = frame.with_columns(
        pl.col("upload_id").replace_strict(rank, return_dtype=pl.Int64).alias("_rank"))
    owner = ranked.group_by(keys).agg(pl.col("_rank").min().alias("_owner"))
    kept = (ranked.join(owner, on=keys, maintain_order="left")
            .filter(pl.col("_rank") == pl.col("_owner")).drop("_rank", "_owner"))
    if not existing.is_empty():
        kept = kept.join(existing.select(keys).unique(), on=keys, how="anti",
                         maintain_order="left")
    before = frame.group_by("upload_id").len()
    after = dict(kept.group_by("upload_id").len().iter_rows())
    dropped = {u: n - after.get(u, 0) for u, n in before.iter_rows() if n - after.get(u, 0)}
    return kept, dropped


OVERLAP_TOPIC = {"imu": "topic", "gps": "topic", "lidar": "topic", "camera": "topic",
                 "aligned": "lidar_topic"}

Span = tuple[str, str, str, int, int]  # upload_id, robot_id, topic, first ts_ns, last ts_ns


def time_spans(frame: pl.DataFrame, topic: str) -> list[Span]:
    """Each upload's time range per robot and topic."""
    if frame.is_empty():
        return []
    agg = frame.group_by("upload_id", "robot_id", topic).agg(
        pl.col("ts_ns").min().alias("lo"), pl.col("ts_ns").max().alias("hi"))
    return [tuple(r) for r in agg.iter_rows()]  # type: ignore[misc]


def touching(spans: list[Span], others: list[Span]) -> set[str]:
    """The uploads of `spans` whose (robot, topic) time range meets another upload's (in
    `spans` or `others`): only their rows can be dropped as overlap, so both engines run
    `drop_overlap` on those alone (on a real fleet, rarely any)."""
    by_key: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for u, r, t, lo, hi in spans + others:
        by_key.setdefault((r, t), []).append((lo, hi, u))
    return {u for u, r, t, lo, hi in spans
            if any(u2 != u and lo <= hi2 and lo2 <= hi for lo2, hi2, u2 in by_key[(r, t)])}


def write_without_overlap(lake, name: str, frame: pl.DataFrame, uploads: list[Upload],
                           robot_type: str) -> tuple[int, pl.DataFrame, dict[str, int]]:
    """Replace the uploads' rows of one table, leaving out rows another upload of the same
    robot holds already, in one keyed commit (decided again if another writer commits
    first, so two partitions cleaned at once cannot both keep an overlapping row).
    Returns (table version, the rows written, rows dropped per upload_id)."""
    ids = [u.upload_id for u in uploads]
    topic = OVERLAP_TOPIC[name]
    scope: dict[str, object] = {"robot_type": [robot_type],
                                "robot_id": sorted({u.robot_id for u in uploads})}
    if not frame.is_empty():  # only rows at these dates and times can hold the same keys
        scope["date"] = frame["date"].unique().sort().to_list()
        scope["ts_ns"] = Between(frame["ts_ns"].min(), frame["ts_ns"].max())

    decided: list = [frame, {}]
    key = TABLES[name]

    def plan(snap: Snapshot) -> FileCommit:
        existing = snap.read(["robot_id", topic, "ts_ns", "upload_id"], filters=scope,
                             schema=SCHEMAS[name])
        existing = existing.filter(~pl.col("upload_id").is_in(ids))
        hit = touching(time_spans(frame, topic), time_spans(existing, topic))
        decided[:] = [frame, {}]
        if hit:  # the rule on the rows it can apply to, the row order kept
            rows = frame.with_row_index("_row")
            kept, dropped = drop_overlap(rows.filter(pl.col("upload_id").is_in(list(hit))),
                                         existing, topic, ids)
            rest = rows.filter(~pl.col("upload_id").is_in(list(hit)))
            decided[:] = [pl.concat([kept, rest]).sort("_row").drop("_row"), dropped]
        # the kept rows as part files, the uploads' earlier rows out: the Spark engine's
        # commit too (a plan that loses to another writer leaves files VACUUM deletes)
        adds = write_part_files(lake, key, decided[0], PARTITION_BY, "local")
        if snap.table is None:
            return FileCommit(adds, [])
        old = replace_files(lake, key, snap.table, "upload_id", ids, {"robot_type": robot_type})
        return FileCommit(adds + old.adds, old.removes)

    schema = pl.DataFrame(schema=SCHEMAS[name]).to_arrow().schema
    version = commit_files(lake, key, plan, schema, PARTITION_BY)
    assert version is not None
    return version, decided[0], decided[1]


def clean_one(lake, upload: Upload, fmt: str, day: str, cleaned_ns: int,
              workers: int | None = None) -> tuple[Cleaned | None, dict, str]:
    """One upload through the rules, whichever engine runs it: (the cleaned tables or None,
    its quality report, a note when it was not decoded). A file that fails to decode is
    its own verdict (an empty report saying why); a transient error (storage, network)
    is raised so the step or task is retried. `workers`: see clean_upload."""
    if fmt not in DECODABLE_FORMATS:
        note = f"{fmt}: indexed only, not decoded"
        return None, _empty_report(upload, day, cleaned_ns, note), note
    try:
        with lake.local_path(upload.raw_key) as path:
            cleaned = clean_upload(path, upload, day, cleaned_ns, workers)
    except Exception as exc:  # one bad upload must not stop the partition
        if is_transient(exc):
            raise
        note = f"decode failed: {type(exc).__name__}: {exc}"
        return None, _empty_report(upload, day, cleaned_ns, note), note
    cleaned = _without_erased(lake, upload, cleaned)
    return cleaned, cleaned.report, ""


def _without_erased(lake, upload: Upload, cleaned: Cleaned) -> Cleaned:
    """Leave out the rows inside the robot's GDPR erase windows (ops/erasures): cleaning a
    recording again must not bring back what an erase removed."""
    from robolake.governance.erase import erased_windows  # erase imports this layer's users

    windows = erased_windows(lake, upload.robot_id)
    if not windows:
        return cleaned
    inside = pl.any_horizontal([(pl.col("ts_ns") >= (w.lo or 0))
                                & (pl.col("ts_ns") < (w.hi or 2**63 - 1)) for w in windows])
    frames = {name: getattr(cleaned, name).filter(~inside)
              for name in ("imu", "gps", "lidar", "camera", "aligned")}
    left_out = cleaned.aligned.height - frames["aligned"].height
    report = {**cleaned.report, "aligned_frames": cleaned.report["aligned_frames"] - left_out}
    if left_out or any(getattr(cleaned, n).height != f.height for n, f in frames.items()):
        report["notes"] = [*report["notes"], "rows inside a GDPR erase window of this robot "
                           "were left out (ops/erasures)"]
    return replace(cleaned, **frames, report=report)


def clean_partition(lake, day: str, robot_type: str, log=lambda _msg: None,
                    reclean: bool = False) -> PartitionResult:
    """Decode, clean and align the (date, robot_type) partition's uploads that no run
    cleaned yet (all of them with `reclean`; see `CleaningPlan`).

    Each cleaned table gets those uploads' rows replaced in one keyed Delta commit
    (rows are selected by upload_id, so a recording that crosses midnight keeps
    its rows in both dates), without rows that another upload of the same robot
    holds already (same topic and time: kept once, counted as overlap). An upload
    that fails to decode is reported, not fatal to the others.

    With several uploads to do and several processes allowed (ROBOLAKE_DECODE_WORKERS),
    each upload is a task in a warm worker process, with the Spark engine's tasks and
    commits (spark_engine.clean_partition_processes): the same tables.
    """
    plan = plan_cleaning(lake, day, robot_type, reclean)
    if not plan.todo:
        return nothing_to_clean(lake, day, robot_type, plan, log)
    processes = decode_workers()
    if processes > 1 and len(plan.todo) > 1:  # one upload per core, in warm workers
        from robolake.spark_engine import clean_partition_processes

        result = clean_partition_processes(lake, day, robot_type, processes, log, plan=plan)[0]
        return replace(result, processes=min(processes, len(plan.todo)))
    frames: dict[str, list[pl.DataFrame]] = {k: [] for k in TABLES if k != "report"}
    reports = []
    counts: dict[str, int] = {}
    for i, (upload, fmt) in enumerate(plan.todo, 1):
        cleaned, report, note = clean_one(lake, upload, fmt, day, plan.cleaned_ns(upload.upload_id))
        reports.append(report)
        if cleaned is None:
            if note.startswith("decode failed"):
                log(f"[{i}/{len(plan.todo)}] {upload.raw_key}: {note}")
            continue
        for name in frames:
            frames[name].append(getattr(cleaned, name))
        for k, v in cleaned.counts.items():
            counts[k] = counts.get(k, 0) + v
        log(f"[{i}/{len(plan.todo)}] {upload.robot_id} {upload.upload_id[:12]}: "
            f"{cleaned.aligned.height} aligned frames; {cleaned.report['notes'][0]}")
    tables = {name: pl.concat(parts) if parts else pl.DataFrame(schema=SCHEMAS[name])
              for name, parts in frames.items()}
    only = [u for u, _ in plan.todo]
    written = {name: write_without_overlap(lake, name, frame, only, robot_type)
               for name, frame in tables.items()}
    versions = {name: w[0] for name, w in written.items()}
    tables = {name: w[1] for name, w in written.items()}
    count_overlap(reports, {name: w[2] for name, w in written.items()}, counts, log)
    tables["report"] = pl.DataFrame(reports, schema=REPORT_SCHEMA)
    versions["report"] = replace_rows(lake, TABLES["report"], tables["report"].to_arrow(),
                                      "upload_id", [u.upload_id for u in only],
                                      partition_by=PARTITION_BY, scope={"robot_type": robot_type})
    return PartitionResult(day, robot_type, only, tables, versions, reports, counts,
                           plan.partition_reports(reports))


def nothing_to_clean(lake, day: str, robot_type: str, plan: CleaningPlan,
                     log) -> PartitionResult:
    """A run that finds every upload of the partition cleaned: the tables as they are (a
    table that does not exist yet is created empty, as later layers read it)."""
    log(f"nothing new to clean: the partition's {len(plan.earlier)} upload(s) were cleaned "
        "by earlier runs (clean them again with a re-clean)")
    versions = {}
    for name, key in TABLES.items():
        schema = pl.DataFrame(schema=SCHEMAS[name]).to_arrow().schema
        version = commit_files(lake, key, lambda snap: None if snap.table is not None
                               else FileCommit([], []), schema, PARTITION_BY)
        assert version is not None
        versions[name] = version
    return PartitionResult(day, robot_type, [], {n: pl.DataFrame(schema=SCHEMAS[n])
                                                 for n in TABLES}, versions, [], {},
                           plan.partition_reports([]))


def count_overlap(reports: list[dict], dropped: dict[str, dict[str, int]],
                   counts: dict[str, int], log) -> None:
    """Overlap counts into each upload's report (and the partition's totals)."""
    for report in reports:
        u = report["upload_id"]
        for name in OVERLAP_TOPIC:
            n = dropped.get(name, {}).get(u, 0)
            report[f"{name}_overlap"] = n
            counts[f"{name}_overlap"] = counts.get(f"{name}_overlap", 0) + n
        report["aligned_frames"] -= report["aligned_overlap"]
        total = sum(report[f"{name}_overlap"] for name in OVERLAP_TOPIC if name != "aligned")
        if total:
            note = (f"{total} sensor rows overlap other uploads of {report['robot_id']} (same "
                    "topic and time): kept the first, dropped here")
            report["notes"] = [*report["notes"], note]
            log(f"{u[:12]}: {note}")
