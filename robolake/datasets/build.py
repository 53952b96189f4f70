"""Build a dataset version from the cleaned tables: select, split, balance, transform, shard.

One sample per sampled LiDAR frame (every `imu_window.stride`-th frame of a
recording's main LiDAR topic). The steps, in order:

1. inputs: the Delta versions of every table read are fixed first and every
   read uses them, so the manifest's lineage is exact;
2. selection: date range, robot types, regions, upload quality, corner-case score;
3. splits by recording (see `assign_splits`);
4. features per recording, through a cache keyed by the hash of the
   recording's rows and the transform (see `FeatureCache`);
5. balancing of the train split (see `balance_copies`);
6. IMU z-scoring with train statistics, shards, manifest, registry row.

A version is immutable: building an existing version again is a no-op when
spec and inputs match and refused otherwise.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import simplejpeg
from PIL import Image

from robolake.annotations import ANNOTATIONS
from robolake.cleaned import TABLES
from robolake.contract import (
    ACCEPTED,
    CORNER_CASE_THRESHOLD,
    USABLE_STATUSES,
    primary_topic_rows,
)
from robolake.datasets.scenarios import (
    CORNER_CASES,
    SCENARIO_CLASSES,
    SCORE_COLUMNS,
    refresh_corner_cases,
)
from robolake.datasets.shards import dataset_prefix, manifest_key, write_split
from robolake.datasets.spec import DatasetSpec
from robolake.decode import cloud_points, compressed_image_payload, iter_sensor_messages
from robolake.governance import audit, privacy
from robolake.raw import RAW_UPLOADS
from robolake.storage import Store
from robolake.tables import append_new_rows, open_table, read_table

REGISTRY = "datasets/registry"
CACHE_PREFIX = "features/cache"
FEATURE_CODE_VERSION = 1  # bump when a transform's code changes: old cache entries stop matching
SPLITS = ("train", "val", "test")
IMU_COLUMNS = ("ax", "ay", "az", "gx", "gy", "gz")
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
# columns of features/corner_cases that no cached transform reads (see build_dataset)
_SCORE_FIELDS = frozenset({*SCORE_COLUMNS, "corner_case_score", "scenario"})


class DatasetVersionExists(ValueError):
    """A version that already exists was requested with a different spec or inputs."""


class QualityGateFailed(ValueError):
    """The selected data does not meet the spec's quality gates; nothing was written."""


# --------------------------------------------------------------------------- transforms


def geodetic_to_enu(lat: np.ndarray, lon: np.ndarray, alt: np.ndarray,
                    origin: tuple[float, float, float]) -> np.ndarray:
    """WGS84 latitude/longitude/altitude -> east, north, up metres around `origin`."""
    def ecef(la, lo, h):
        la, lo = np.radians(la), np.radians(lo)
        n = WGS84_A / np.sqrt(1 - WGS84_E2 * np.sin(la) ** 2)
        return np.stack([(n + h) * np.cos(la) * np.cos(lo), (n + h) * np.cos(la) * np.sin(lo),
                         (n * (1 - WGS84_E2) + h) * np.sin(la)], axis=-1)

    lat0, lon0, alt0 = origin
    d = ecef(lat, lon, alt) - ecef(np.array(lat0), np.array(lon0), np.array(alt0))
    sla, cla = np.sin(np.radians(lat0)), np.cos(np.radians(lat0))
    slo, clo = np.sin(np.radians(lon0)), np.cos(np.radians(lon0))
    east = -slo * d[..., 0] + clo * d[..., 1]
    north = -sla * clo * d[..., 0] - sla * slo * d[..., 1] + cla * d[..., 2]
    up = cla * clo * d[..., 0] + cla * slo * d[..., 1] + sla * d[..., 2]
    return np.stack([east, north, up], axis=-1)


def voxel_downsample(points: np.ndarray, voxel_m: float, range_m: float) -> np.ndarray:
    """Points within `range_m` (horizontal), one (the mean) per occupied voxel, as float16."""
    pts = points[np.hypot(points[:, 0], points[:, 1]) <= range_m]
    if not len(pts):
        return np.zeros((0, 3), dtype=np.float16)
    voxel = np.floor(pts / voxel_m).astype(np.int64)
    _, inverse, counts = np.unique(voxel, axis=0, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), 3))
    np.add.at(sums, inverse.ravel(), pts)
    return (sums / counts[:, None]).astype(np.float16)


def imu_windows(imu_ts: np.ndarray, imu: np.ndarray, t: np.ndarray, size: int) -> np.ndarray:
    """The last `size` IMU rows at or before each time (NaN-filled when too few exist)."""
    end = np.searchsorted(imu_ts, t, side="right")
    idx = end[:, None] - size + np.arange(size)[None, :]
    out = (imu[np.clip(idx, 0, max(len(imu) - 1, 0))] if len(imu)
           else np.full((len(t), size, imu.shape[1]), np.nan))
    out = out.astype(np.float32)
    out[end < size] = np.nan
    return out


def _interpolate_nulls(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaNs between valid values; no extrapolation."""
    out = values.copy()
    ok = np.isfinite(values)
    if ok.sum() >= 2:
        idx = np.arange(len(values))
        first, last = idx[ok][0], idx[ok][-1]
        inside = ~ok & (idx > first) & (idx < last)
        out[inside] = np.interp(idx[inside], idx[ok], values[ok])
    return out


@dataclass
class RecordingFeatures:
    """Transformed features of one recording's sampled frames (row i = ts_ns[i])."""

    ts_ns: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # imu, gps, label (n, ...)
    lidar: list[np.ndarray] | None = None
    camera: list[bytes] | None = None
    # frames too close to the recording's start for a full IMU window or GPS history:
    # not samples, and not counted as missing data
    edge: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.edge is None:
            self.edge = np.zeros(len(self.ts_ns), dtype=bool)

    def valid(self) -> np.ndarray:
        ok = np.ones(len(self.ts_ns), dtype=bool)
        for arr in self.arrays.values():
            ok &= np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if self.lidar is not None:
            ok &= np.array([len(p) > 0 for p in self.lidar], dtype=bool)
        if self.camera is not None:
            ok &= np.array([len(c) > 0 for c in self.camera], dtype=bool)
        return ok

    def to_bytes(self) -> bytes:
        parts = {"ts_ns": self.ts_ns, "edge": self.edge,
                 **{f"a_{k}": v for k, v in self.arrays.items()}}
        if self.lidar is not None:
            parts["lidar_points"] = (np.concatenate(self.lidar) if self.lidar
                                     else np.zeros((0, 3), np.float16))
            parts["lidar_offsets"] = np.cumsum([0] + [len(p) for p in self.lidar])
        if self.camera is not None:
            parts["camera_bytes"] = np.frombuffer(b"".join(self.camera), dtype=np.uint8)
            parts["camera_offsets"] = np.cumsum([0] + [len(c) for c in self.camera])
        buf = io.BytesIO()
        np.savez(buf, **parts)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RecordingFeatures:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        out = cls(z["ts_ns"], {k[2:]: z[k] for k in z.files if k.startswith("a_")},
                  edge=z["edge"])
        if "lidar_offsets" in z.files:
            o, pts = z["lidar_offsets"], z["lidar_points"]
            out.lidar = [pts[o[i]:o[i + 1]] for i in range(len(o) - 1)]
        if "camera_offsets" in z.files:
            o, raw = z["camera_offsets"], z["camera_bytes"].tobytes()
            out.camera = [raw[o[i]:o[i + 1]] for i in range(len(o) - 1)]
        return out


def _payload_message(ref: str | None) -> tuple[str, int] | None:
    """(topic, log_ns) of a `raw_key#topic@log_ns` payload reference."""
    if not ref:
        return None
    topic, log_ns = ref.split("#", 1)[1].rsplit("@", 1)
    return topic, int(log_ns)


def _read_payloads(path: Path, topic_times: dict[str, set[int]]
                   ) -> dict[tuple[str, int], tuple[bytes, str]]:
    """Serialized messages (with encoding) at the given (topic, log time)s, in one pass."""
    found = {}
    for topic, _msgtype, log_ns, data, encoding in iter_sensor_messages(path):
        if log_ns in topic_times.get(topic, ()):
            found[(topic, log_ns)] = (data, encoding)
    return found


def recording_features(spec: DatasetSpec, frames: pl.DataFrame, sampled: np.ndarray,
                       imu: pl.DataFrame | None, lidar_refs: list[str | None],
                       camera_refs: list[str | None], raw_path_ctx) -> RecordingFeatures:
    """Features and labels of one recording's sampled frames.

    `frames` are all frames of the recording's main LiDAR topic sorted by ts_ns
    (the GPS track and labels use every frame), `sampled` marks the ones that
    become samples; `lidar_refs`/`camera_refs` are per sampled frame.
    `raw_path_ctx()` opens the raw recording (only called when LiDAR or camera
    payloads are needed).
    """
    f = spec.features
    out = RecordingFeatures(frames["ts_ns"].to_numpy()[sampled])
    if f.imu_window:
        _add_imu_windows(out, imu, f.imu_window.size)
    enu = _enu_track(frames, interpolate=f.gps_trajectory is None or f.gps_trajectory.interpolate)
    if f.gps_trajectory:
        _add_gps_history(out, enu, sampled, f.gps_trajectory.history)
    if spec.labels.kind == "ego_motion":
        out.arrays["label"] = _ego_motion_labels(frames, enu)[sampled].astype(np.float32)
    if f.lidar or f.camera:
        _add_payloads(out, spec, lidar_refs, camera_refs, raw_path_ctx)
    return out


def _add_imu_windows(out: RecordingFeatures, imu: pl.DataFrame, size: int) -> None:
    imu_sorted = imu.sort("ts_ns")
    values = imu_sorted.select(IMU_COLUMNS).to_numpy().astype(np.float64)
    imu_ts = imu_sorted["ts_ns"].to_numpy()
    out.arrays["imu"] = imu_windows(imu_ts, values, out.ts_ns, size)
    out.edge |= np.searchsorted(imu_ts, out.ts_ns, side="right") < size


def _enu_track(frames: pl.DataFrame, interpolate: bool) -> np.ndarray:
    """Every frame's GPS position in metres east/north/up of the recording's first fix
    (NaN without one)."""
    lat = frames["gps_lat"].to_numpy().astype(np.float64)
    lon = frames["gps_lon"].to_numpy().astype(np.float64)
    alt = frames["gps_alt"].to_numpy().astype(np.float64)
    if interpolate:
        lat, lon, alt = (_interpolate_nulls(v) for v in (lat, lon, alt))
    ok = np.isfinite(lat) & np.isfinite(lon) & np.isfinite(alt)
    enu = np.full((len(lat), 3), np.nan)
    if ok.any():
        origin = (lat[ok][0], lon[ok][0], alt[ok][0])
        enu[ok] = geodetic_to_enu(lat[ok], lon[ok], alt[ok], origin)
    return enu


def _add_gps_history(out: RecordingFeatures, enu: np.ndarray, sampled: np.ndarray,
                     history: int) -> None:
    """The last `history` positions relative to each sampled frame's own."""
    idx = np.flatnonzero(sampled)[:, None] - (history - 1) + np.arange(history)[None, :]
    traj = enu[np.clip(idx, 0, None)] - enu[sampled][:, None, :]
    traj[idx < 0] = np.nan
    out.arrays["gps"] = traj.astype(np.float32)
    out.edge |= (idx < 0).any(axis=1)


def _ego_motion_labels(frames: pl.DataFrame, enu: np.ndarray) -> np.ndarray:
    """(speed, yaw rate) per frame: speed from the ENU track (central difference), yaw
    rate from the gyro."""
    t_all = frames["ts_ns"].to_numpy()
    n = len(t_all)
    prev, nxt = np.clip(np.arange(n) - 1, 0, None), np.clip(np.arange(n) + 1, None, n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = (np.linalg.norm(enu[nxt, :2] - enu[prev, :2], axis=1)
                 / ((t_all[nxt] - t_all[prev]) / 1e9))
    speed[nxt == prev] = np.nan
    return np.stack([speed, frames["imu_gz"].to_numpy()], axis=1)


def _add_payloads(out: RecordingFeatures, spec: DatasetSpec, lidar_refs: list[str | None],
                  camera_refs: list[str | None], raw_path_ctx) -> None:
    """Downsampled point clouds and resized images, read from the raw file in one pass."""
    f = spec.features
    lidar_msgs = [_payload_message(r) for r in lidar_refs] if f.lidar else []
    camera_msgs = [_payload_message(r) for r in camera_refs] if f.camera else []
    wanted: dict[str, set[int]] = {}
    for topic, log_ns in filter(None, lidar_msgs + camera_msgs):
        wanted.setdefault(topic, set()).add(log_ns)
    with raw_path_ctx() as path:
        payloads = _read_payloads(path, wanted)
    if f.lidar:
        out.lidar = []
        for msg in lidar_msgs:
            hit = payloads.get(msg) if msg else None
            pts = cloud_points(*hit) if hit else np.zeros((0, 3), np.float32)
            out.lidar.append(voxel_downsample(pts, f.lidar.voxel_size_m,
                                              f.lidar.range_crop_m))
    if f.camera:
        out.camera = []
        for msg in camera_msgs:
            hit = payloads.get(msg) if msg else None
            out.camera.append(_resized_jpeg(hit, f.camera.resize) if hit else b"")


def _resized_jpeg(message: tuple[bytes, str], size: tuple[int, int]) -> bytes:
    _stamp, jpeg = compressed_image_payload(*message)
    try:
        img = simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
    except ValueError:  # not a JPEG (e.g. PNG): let PIL read it
        img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    resized = np.asarray(Image.fromarray(img).resize(tuple(size), Image.BILINEAR))
    return simplejpeg.encode_jpeg(np.ascontiguousarray(resized), quality=90, colorspace="RGB")


# --------------------------------------------------------------------------- cache


def rows_digest(frame: pl.DataFrame) -> bytes:
    """A hash of every row and column, in order."""
    return hashlib.sha256(np.ascontiguousarray(frame.hash_rows(seed=0).to_numpy())).digest()


class FeatureCache:
    """Transformed features per recording under `features/cache/<upload_id>/<hash>.npz` in
    the lake (by upload, so an erase of a robot's uploads finds its entries).

    The key hashes the recording's input rows, the feature and label sections of
    the spec and FEATURE_CODE_VERSION, so anything that would change the output
    misses; `hits` and `misses` count what a build reused and recomputed.
    """

    def __init__(self, lake: Store):
        self.lake = lake
        self.hits = 0
        self.misses = 0
        self.computed_elsewhere: set[str] = set()

    @staticmethod
    def key(spec: DatasetSpec, upload_id: str, *digests: bytes) -> str:
        """The entry's key from the spec's feature sections and the `rows_digest` of each
        input (computed where the rows are: a Spark task sends back only the digest)."""
        h = hashlib.sha256()
        h.update(json.dumps({"upload_id": upload_id, "code": FEATURE_CODE_VERSION,
                             "features": spec.features.model_dump(mode="json"),
                             "labels": spec.labels.model_dump(mode="json"),
                             **privacy.cache_marker(spec)},
                            sort_keys=True).encode())
        for digest in digests:
            h.update(digest)
        return h.hexdigest()

    @staticmethod
    def path(key: str, upload_id: str) -> str:
        # under the recording's id, so a GDPR erase finds every entry of a robot's uploads
        return f"{CACHE_PREFIX}/{upload_id}/{key}.npz"

    def has(self, key: str, upload_id: str) -> bool:
        return self.lake.exists(self.path(key, upload_id))

    def put(self, key: str, upload_id: str, features: RecordingFeatures) -> None:
        self.lake.write_bytes(self.path(key, upload_id), features.to_bytes())  # whole or none

    def get_or_compute(self, key: str, compute, upload_id: str) -> RecordingFeatures:
        """The cached entry, or `compute()` stored under the key. Keys in `computed_elsewhere`
        (entries Spark tasks just wrote for this build) count as misses."""
        if self.has(key, upload_id):
            if key in self.computed_elsewhere:
                self.misses += 1
            else:
                self.hits += 1
            return RecordingFeatures.from_bytes(self.lake.read_bytes(self.path(key, upload_id)))
        self.misses += 1
        features = compute()
        self.put(key, upload_id, features)
        return features


# --------------------------------------------------------------------------- splits, balance


def assign_splits(upload_ids: list[str], fractions: dict[str, float]) -> dict[str, str]:
    """Recording -> split. Recordings are ordered by the hash of their id and cut by the
    fractions (largest remainder; every split with a fraction > 0 gets a recording when
    there are enough), so the assignment depends only on the set of recordings."""
    ordered = sorted(set(upload_ids), key=lambda u: hashlib.sha256(u.encode()).hexdigest())
    n = len(ordered)
    exact = {s: fractions[s] * n for s in SPLITS}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(SPLITS, key=lambda s: exact[s] - counts[s], reverse=True):
        if sum(counts.values()) < n:
            counts[s] += 1
    wanted = [s for s in SPLITS if fractions[s] > 0]
    for s in wanted:  # a non-empty split takes one from the largest when it would be empty
        if counts[s] == 0 and n >= len(wanted):
            donor = max(wanted, key=lambda d: counts[d])
            counts[donor] -= 1
            counts[s] += 1
    out, i = {}, 0
    for s in SPLITS:
        for u in ordered[i:i + counts[s]]:
            out[u] = s
        i += counts[s]
    return out


def balance_weights(groups: np.ndarray, corner: np.ndarray, weights: dict[str, float],
                    multiplier: float) -> np.ndarray:
    """Sampling weight per sample: weights[group] / size of the group (groups without a
    weight count 1), times `multiplier` for corner cases. With no weights the groups
    keep their natural sizes."""
    w = np.ones(len(groups))
    if weights:
        names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        w = np.array([weights.get(str(n), 1.0) for n in names])[inverse] / sizes[inverse]
    return w * np.where(corner, multiplier, 1.0)


def balance_copies(weights: np.ndarray, seed: int) -> np.ndarray:
    """How many times each sample appears so the total stays about the same and each
    sample's expected share is proportional to its weight (stochastic rounding)."""
    if not len(weights):
        return np.zeros(0, dtype=np.int64)
    expected = weights * len(weights) / weights.sum()
    base = np.floor(expected)
    extra = np.random.default_rng(seed).random(len(weights)) < expected - base
    return (base + extra).astype(np.int64)


# --------------------------------------------------------------------------- the build


@dataclass
class BuildResult:
    name: str
    version: str
    manifest: dict
    created: bool  # False: the version existed with the same spec and inputs
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def samples(self) -> dict[str, int]:
        return {s: v["samples"] for s, v in self.manifest["splits"].items()}


def input_tables(spec: DatasetSpec) -> list[str]:
    tables = [TABLES["aligned"], CORNER_CASES, TABLES["report"], RAW_UPLOADS]
    if spec.labels.source == "annotations":
        tables.append(ANNOTATIONS)
    if spec.features.imu_window:
        tables.append(TABLES["imu"])
    if spec.features.lidar:
        tables.append(TABLES["lidar"])
    if spec.features.camera:
        tables.append(TABLES["camera"])
    return tables


def _source_filters(spec: DatasetSpec) -> list[tuple[str, str, object]]:
    """The spec's row filters on the scored frames (and partition filters on the other
    tables), as (column, op, value): one list both engines apply."""
    src = spec.sources
    out: list[tuple[str, str, object]] = [
        ("date", ">=", src.dates.start.isoformat()),
        ("date", "<=", (src.dates.end or date.max).isoformat())]
    if src.filters.robot_type:
        out.append(("robot_type", "in", list(src.filters.robot_type)))
    if src.filters.region:
        out.append(("region", "in", list(src.filters.region)))
    return out


def _scan_filtered(lake: Store, key: str, version: int,
                   filters: list[tuple[str, str, object]]) -> pl.LazyFrame:
    frame = pl.scan_delta(lake.table_uri(key), version=version,
                          storage_options=lake.delta_options or None)
    ops = {"in": lambda c, v: c.is_in(v), ">=": lambda c, v: c >= pl.lit(v),
           "<=": lambda c, v: c <= pl.lit(v)}
    for column, op, value in filters:
        frame = frame.filter(ops[op](pl.col(column), value))
    return frame


def _select_recordings(lake: Store, spec: DatasetSpec, versions: dict[str, int],
                       spark=None) -> pl.DataFrame:
    """Scored frames of the recordings the spec's filters keep (before per-frame filters)."""
    src = spec.sources
    if spark is None:
        scored = _scan_filtered(lake, CORNER_CASES, versions[CORNER_CASES],
                                _source_filters(spec)).collect()
    else:
        from robolake.datasets.spark_build import read_version

        scored = read_version(spark, lake, CORNER_CASES, versions[CORNER_CASES], None,
                              _source_filters(spec))
    reports = pl.from_arrow(read_table(lake, TABLES["report"], columns=["upload_id", "null_rate"],
                                       version=versions[TABLES["report"]]))
    worst = reports.group_by("upload_id").agg(pl.col("null_rate").max())
    keep = worst.filter(pl.col("null_rate") <= src.filters.quality.max_null_rate)["upload_id"]
    uploads = pl.from_arrow(read_table(lake, RAW_UPLOADS, columns=["upload_id", "status",
                                                                   "raw_key"],
                                       version=versions[RAW_UPLOADS]))
    allowed = USABLE_STATUSES if src.filters.quality.include_flagged else (ACCEPTED,)
    uploads = uploads.filter(pl.col("status").is_in(list(allowed))
                             & pl.col("upload_id").is_in(keep.implode())).unique("upload_id")
    return scored.join(uploads.select("upload_id", "raw_key"), on="upload_id")


def _main_topic_frames(frames: pl.DataFrame, stride: int) -> pl.DataFrame:
    """Frames of each recording's main LiDAR topic in time order; `_sampled` marks every
    `stride`-th one."""
    main = primary_topic_rows(frames, "lidar_topic", per=["upload_id"])
    return (main.sort("upload_id", "ts_ns")
            .with_columns((pl.int_range(pl.len()).over("upload_id") % stride == 0)
                          .alias("_sampled")))


def _refs(lake: Store, key: str, version: int, upload_id: str, topic: str | None,
          ts: pl.Series) -> list[str | None]:
    """payload_ref of the rows of a sensor table at the given times (None where absent)."""
    filters = {"upload_id": upload_id, **({"topic": topic} if topic else {})}
    rows = pl.from_arrow(read_table(lake, key, columns=["ts_ns", "payload_ref"],
                                    filters=filters, version=version)).unique("ts_ns")
    mapping = dict(zip(rows["ts_ns"].to_list(), rows["payload_ref"].to_list(), strict=True))
    return [mapping.get(t) if t is not None else None for t in ts.to_list()]


def _describe(values: np.ndarray) -> dict:
    """Per-channel statistics of an (n, ..., channels) array, float64 accumulation."""
    if not values.size:
        return {"count": 0}
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    return {"count": int(len(flat)), "mean": flat.mean(axis=0).tolist(),
            "std": flat.std(axis=0).tolist(), "min": flat.min(axis=0).tolist(),
            "max": flat.max(axis=0).tolist()}


def split_statistics(samples: list[dict], label_kind: str) -> dict:
    """Counts per group and scenario, label distribution and feature statistics of one
    split's samples as written (the manifest's figures; tests recompute them from shards)."""
    meta = [s["meta"] for s in samples]
    out: dict = {
        "samples": len(samples),
        "recordings": len({m["upload_id"] for m in meta}),
        "groups": _counts(m["group"] for m in meta),
        "robot_types": _counts(m["robot_type"] for m in meta),
        "scenarios": _counts(m["scenario"] for m in meta),
        "corner_cases": sum(m["corner_case_score"] >= CORNER_CASE_THRESHOLD for m in meta),
        "features": {},
    }
    for name in ("imu", "gps"):
        if samples and name in samples[0]:
            out["features"][name] = _describe(np.stack([s[name] for s in samples]))
    if samples and "lidar" in samples[0]:
        out["features"]["lidar_points"] = _describe(
            np.array([[len(s["lidar"])] for s in samples], dtype=np.float64))
    if samples and "camera" in samples[0]:
        out["features"]["camera_bytes"] = _describe(
            np.array([[len(s["camera"])] for s in samples], dtype=np.float64))
    if label_kind == "ego_motion":
        labels = np.stack([s["label"] for s in samples]) if samples else np.zeros((0, 2))
        out["labels"] = _describe(labels)
    else:
        out["labels"] = out["scenarios"]
    return out


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def build_dataset(lake: Store, spec: DatasetSpec, log=lambda _msg: None,
                  spark=None) -> BuildResult:
    """Build (or confirm) the spec's version; see the module docstring for the steps.
    With a SparkSession, the big inputs are read and the missing features computed on
    Spark (robolake.datasets.spark_build); the version is the same either way."""
    refresh_corner_cases(lake)
    versions = _pin_inputs(lake, spec)
    recordings = _recordings(lake, spec, versions, log, spark)
    audit_reads(lake, spec, versions)
    existing = _existing_version(lake, spec, recordings.fingerprint, log)
    if existing is not None:
        return existing
    cache = FeatureCache(lake)
    if spark is not None:
        from robolake.datasets.spark_build import compute_missing_features

        missing = [u for u in recordings.upload_ids
                   if not cache.has(recordings.cache_keys[u], u)]
        compute_missing_features(spark, lake, spec, versions, [
            (u, recordings.cache_keys[u], recordings.by_upload[u]) for u in missing], log)
        cache.computed_elsewhere = {recordings.cache_keys[u] for u in missing}
    splits = assign_splits(recordings.upload_ids, spec.output.splits.model_dump())
    frames, features = _featurize(lake, spec, versions, recordings, splits, cache, log)
    usable, quality = _filter_and_gate(spec, frames)
    usable = _with_copies(spec, usable)
    samples = _materialize(spec, usable, features)
    normalization = _zscore(spec, samples)
    manifest_splits = _write_splits(lake, spec, samples, log)
    manifest = {
        "name": spec.name, "version": spec.version, "description": spec.description,
        "spec_hash": spec.spec_hash, "spec": spec.model_dump(mode="json"),
        "input_fingerprint": recordings.fingerprint, "inputs": versions,
        "created_ns": time.time_ns(), "splits": manifest_splits,
        "split_of_recording": splits, "normalization": normalization,
        "quality": quality, "cache": {"hits": cache.hits, "misses": cache.misses},
        "privacy": privacy.manifest_section(spec),
    }
    lake.write_bytes(manifest_key(spec.name, spec.version),
                     json.dumps(manifest, indent=1).encode())
    _register(lake, manifest)
    return BuildResult(spec.name, spec.version, manifest, True, cache.hits, cache.misses)


def _pin_inputs(lake: Store, spec: DatasetSpec) -> dict[str, int]:
    """The Delta version of every table the build reads (every read uses it, so the
    manifest's lineage is exact)."""
    versions = {}
    for key in input_tables(spec):
        table = open_table(lake, key)
        if table is None:
            raise FileNotFoundError(f"dataset {spec.name}: input table {key} does not exist yet "
                                    f"(run robolake ingest --through cleaned first)")
        versions[key] = table.version()
    return versions


def audit_reads(lake: Store, spec: DatasetSpec, versions: dict[str, int]) -> int | None:
    """ops/audit: one `read` entry per pinned input table of this build (table, Delta
    version, the spec's dates, dataset, run id), and the `approve` entry of an approved
    spec, in one commit. Recorded whether the build then creates the version or finds it
    built (it read the rows either way); None when auditing is off."""
    if not audit.enabled():
        return None
    actor = getattr(lake, "audit_actor", None) or audit.current_actor()
    dates = spec.sources.dates
    details = {"dataset": f"{spec.name}@{spec.version}", "build_id": uuid.uuid4().hex,
               "run_id": actor.name.removeprefix("run:") if actor.role == "run" else None,
               "privacy": spec.privacy}
    entries = [audit.Entry("read", key, version=version, actor=actor, details=details,
                           partition=f"date={dates.start}..{dates.end or ''}")
               for key, version in sorted(versions.items())]
    approval = privacy.approval_entry(spec, actor)
    return audit.append(lake, entries + ([approval] if approval else []))


@dataclass
class _Recordings:
    """The selected recordings' input rows and the hashes that identify them."""

    frames: pl.DataFrame  # main-topic LiDAR frames of all recordings; `_sampled` marks samples
    by_upload: dict[str, pl.DataFrame]  # the same per upload_id
    # each recording's main IMU rows when the spec reads IMU (on Spark they stay in the
    # tasks: the feature tasks read their own)
    imu: dict[str, pl.DataFrame]
    cache_keys: dict[str, str]  # FeatureCache key per upload_id
    fingerprint: str  # of every input row: what the immutability check compares

    @property
    def upload_ids(self) -> list[str]:
        return sorted(self.by_upload)


def _recordings(lake: Store, spec: DatasetSpec, versions: dict[str, int], log,
                spark=None) -> _Recordings:
    stride = spec.features.imu_window.stride if spec.features.imu_window else 1
    frames = _main_topic_frames(_select_recordings(lake, spec, versions, spark), stride)
    frames = privacy.mask_frames(spec, frames)  # before any feature, cache key or shard
    if spec.labels.source == "annotations":
        frames = _annotated(lake, frames, versions[ANNOTATIONS])
    by_upload = {key[0]: rows for key, rows in frames.partition_by(
        "upload_id", as_dict=True, maintain_order=True).items()}
    log(f"{spec.name} {spec.version}: {len(by_upload)} recordings, "
        f"{int(frames['_sampled'].sum())} sampled frames before per-frame filters")
    imu: dict[str, pl.DataFrame] = {}
    imu_digests: dict[str, bytes] = {}
    if spec.features.imu_window and spark is not None:  # the IMU rows stay on the executors
        from robolake.datasets.spark_build import imu_digests as spark_imu_digests

        imu_digests = spark_imu_digests(spark, lake, spec, versions[TABLES["imu"]],
                                        list(by_upload))
        log(f"IMU rows of {len(imu_digests)} recording(s) hashed in Spark tasks")
    elif spec.features.imu_window:
        imu = _main_imu_rows(lake, spec, versions[TABLES["imu"]], list(by_upload))
        imu_digests = {u: rows_digest(rows) for u, rows in imu.items()}
    # the same hash over every column fingerprints the inputs for the immutability check
    cache_keys, input_keys = {}, {}
    for u, rows in by_upload.items():
        columns = sorted(c for c in rows.columns if c != "source_version")
        # The cache key leaves out the corner-case scores: rarity is relative to the whole
        # fleet, so a new day of other robots changes the scores of old recordings, and no
        # feature reads them (they steer filters, balancing and scenario labels, which are
        # not cached). With them in the key, old recordings missed the cache for nothing.
        cached = rows.select([c for c in columns if c not in _SCORE_FIELDS])
        more = [imu_digests[u]] if u in imu_digests else []
        cache_keys[u] = FeatureCache.key(spec, u, rows_digest(cached), *more)
        input_keys[u] = FeatureCache.key(spec, u, rows_digest(rows.select(columns)), *more)
    fingerprint = hashlib.sha256(json.dumps(sorted(input_keys.values())).encode()).hexdigest()
    return _Recordings(frames, by_upload, imu, cache_keys, fingerprint)


def _annotated(lake: Store, frames: pl.DataFrame, version: int) -> pl.DataFrame:
    """Frames with people's labels as their scenario; only labelled frames are sampled."""
    labels = pl.from_arrow(read_table(lake, ANNOTATIONS, columns=["upload_id", "ts_ns", "label"],
                                      version=version))
    joined = frames.join(labels, on=["upload_id", "ts_ns"], how="left")
    return joined.with_columns(pl.coalesce("label", "scenario").alias("scenario"),
                               pl.col("label").is_not_null().alias("_sampled")).drop("label")


def imu_filters(spec: DatasetSpec) -> list[tuple[str, str, object]]:
    """The spec's filters that prune the IMU table: robot type and region, not the date (a
    window at a recording's first frames after midnight reads IMU rows of the day before:
    rows are dated by time)."""
    return [f for f in _source_filters(spec) if f[0] != "date"]


def main_imu(rows: pl.DataFrame) -> pl.DataFrame:
    """One recording's main IMU rows (its busiest IMU topic) as ts_ns and IMU_COLUMNS, by
    time (ties by value, so both engines give the same order)."""
    return primary_topic_rows(rows).select("ts_ns", *IMU_COLUMNS).sort("ts_ns", *IMU_COLUMNS)


IMU_READ_COLUMNS = ["upload_id", "topic", "ts_ns", *IMU_COLUMNS]


def _main_imu_rows(lake: Store, spec: DatasetSpec, version: int,
                   upload_ids: list[str]) -> dict[str, pl.DataFrame]:
    """Each recording's `main_imu` rows, in one scan of the pinned version."""
    found = {}
    if upload_ids:
        filters = [*imu_filters(spec), ("upload_id", "in", upload_ids)]
        rows = _scan_filtered(lake, TABLES["imu"], version, filters).select(
            IMU_READ_COLUMNS).collect()
        found = rows.partition_by("upload_id", as_dict=True)
    none = pl.DataFrame(schema={"upload_id": pl.String, "topic": pl.String, "ts_ns": pl.Int64,
                                **{c: pl.Float64 for c in IMU_COLUMNS}})
    return {u: main_imu(found.get((u,), none)) for u in upload_ids}


def _existing_version(lake: Store, spec: DatasetSpec, fingerprint: str,
                      log) -> BuildResult | None:
    """The version as built before when spec and inputs are the same; None when it does
    not exist. Versions are immutable: any other difference is refused."""
    key = manifest_key(spec.name, spec.version)
    if not lake.exists(key):
        return None
    existing = json.loads(lake.read_bytes(key))
    if existing["spec_hash"] == spec.spec_hash and existing["input_fingerprint"] == fingerprint:
        log(f"{spec.name} {spec.version} exists with the same spec and inputs: nothing to do")
        return BuildResult(spec.name, spec.version, existing, created=False)
    what = ("a different spec" if existing["spec_hash"] != spec.spec_hash
            else "different input data")
    raise DatasetVersionExists(
        f"dataset {spec.name} version {spec.version} already exists (built "
        f"{_when(existing['created_ns'])} from spec {existing['spec_hash'][:12]} and inputs "
        f"{existing['input_fingerprint'][:12]}); this build has {what} (spec "
        f"{spec.spec_hash[:12]}, inputs {fingerprint[:12]}). Versions are immutable: "
        f"bump `version` in the spec to build a new one.")


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ns / 1e9))


def _featurize(lake: Store, spec: DatasetSpec, versions: dict[str, int], recordings: _Recordings,
               splits: dict[str, str], cache: FeatureCache,
               log) -> tuple[pl.DataFrame, dict[str, RecordingFeatures]]:
    """Each recording's features (through the cache), and its sampled frames with their
    split, `_valid` (every feature and label present), `_edge` and `_row` (the row in
    the features)."""
    upload_ids = recordings.upload_ids
    rows_out = []
    features: dict[str, RecordingFeatures] = {}
    for i, u in enumerate(upload_ids, 1):
        all_rows = recordings.by_upload[u]
        rows = all_rows.filter(pl.col("_sampled"))
        compute = partial(_compute_features_here, lake, spec, versions, u, all_rows,
                          recordings.imu.get(u))
        features[u] = feats = cache.get_or_compute(recordings.cache_keys[u], compute, u)
        rows_out.append(rows.with_columns(pl.lit(splits[u]).alias("split"),
                                          pl.Series("_valid", feats.valid()),
                                          pl.Series("_edge", feats.edge),
                                          pl.int_range(rows.height).alias("_row")))
        log(f"[{i}/{len(upload_ids)}] {u[:12]} ({splits[u]}): {rows.height} frames")
    if rows_out:
        return pl.concat(rows_out), features
    no_frames = recordings.frames.with_columns(  # the quality gates refuse the build
        pl.lit("").alias("split"), pl.lit(True).alias("_valid"), pl.lit(False).alias("_edge"),
        pl.lit(0).alias("_row"))
    return no_frames, features


def _compute_features_here(lake: Store, spec: DatasetSpec, versions: dict[str, int],
                           upload_id: str, frames: pl.DataFrame,
                           imu: pl.DataFrame | None) -> RecordingFeatures:
    """A cache miss in this process; on Spark the IMU rows were left in the tasks, so they
    are read here for the rare entry that went missing since (an erase)."""
    if spec.features.imu_window and imu is None:
        imu = _main_imu_rows(lake, spec, versions[TABLES["imu"]], [upload_id])[upload_id]
    return compute_features(lake, spec, versions, upload_id, frames, imu)


def compute_features(lake: Store, spec: DatasetSpec, versions: dict[str, int], upload_id: str,
                     frames: pl.DataFrame, imu: pl.DataFrame | None) -> RecordingFeatures:
    """One recording's features (a cache miss): `frames` are its main-topic frames with
    `_sampled` marking the samples; `imu` its main IMU rows when the spec reads IMU."""
    rows = frames.filter(pl.col("_sampled"))
    lidar_refs = camera_refs = []
    if spec.features.lidar:
        lidar_refs = _refs(lake, TABLES["lidar"], versions[TABLES["lidar"]], upload_id,
                           rows["lidar_topic"][0], rows["ts_ns"])
    if spec.features.camera:
        camera_refs = _refs(lake, TABLES["camera"], versions[TABLES["camera"]], upload_id, None,
                            rows["camera_ts_ns"])
    raw_key = rows["raw_key"][0]
    return recording_features(spec, frames, frames["_sampled"].to_numpy(), imu, lidar_refs,
                              camera_refs, lambda: lake.local_path(raw_key))


def _filter_and_gate(spec: DatasetSpec, frames: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """The frames that become samples and the manifest's quality figures; refuses a build
    that misses the spec's quality gates."""
    edge_frames = int(frames["_edge"].sum())
    selected = frames.filter(~pl.col("_edge"))
    # per-frame filters: corner-case score, then missing features
    selected = selected.filter(pl.col("corner_case_score")
                               >= spec.sources.filters.min_corner_case_score)
    missing = int((~selected["_valid"]).sum())
    missing_rate = missing / selected.height if selected.height else 0.0
    usable = selected.filter(pl.col("_valid"))
    gates = spec.quality_gates
    problems = []
    if usable.height < gates.min_samples:
        problems.append(f"{usable.height} samples, fewer than quality_gates.min_samples "
                        f"{gates.min_samples}")
    if missing_rate > gates.max_missing_rate:
        problems.append(f"missing rate {missing_rate:.1%} (frames without every feature and "
                        f"label) above quality_gates.max_missing_rate "
                        f"{gates.max_missing_rate:.1%}")
    if problems:
        raise QualityGateFailed(f"dataset {spec.name} {spec.version}: " + "; ".join(problems))
    quality = {"candidate_frames": selected.height, "edge_frames": edge_frames,
               "missing": missing, "missing_rate": missing_rate, "samples": usable.height}
    return usable, quality


def _with_copies(spec: DatasetSpec, usable: pl.DataFrame) -> pl.DataFrame:
    """`_copies`: how many times each sample is written (train balanced, the rest once)."""
    copies = np.ones(usable.height, dtype=np.int64)
    if spec.balancing.weights or spec.balancing.corner_case_multiplier != 1.0:
        train_mask = usable["split"] == "train"
        train = usable.filter(train_mask)
        w = balance_weights(train[spec.balancing.by].to_numpy(),
                            (train["corner_case_score"] >= CORNER_CASE_THRESHOLD).to_numpy(),
                            spec.balancing.weights, spec.balancing.corner_case_multiplier)
        copies[train_mask.to_numpy()] = balance_copies(w, int(spec.spec_hash[:8], 16))
    return usable.with_columns(pl.Series("_copies", copies))


def _write_splits(lake: Store, spec: DatasetSpec, samples: dict[str, list], log) -> dict:
    """Each split's shards and statistics (the manifest's `splits`)."""
    prefix = dataset_prefix(spec.name, spec.version)
    shard_bytes = int(spec.output.shard_size_mb * 1024 * 1024)
    out = {}
    for split in SPLITS:
        part = samples[split]
        stats = split_statistics(part, spec.labels.kind)
        stats["shards"] = write_split(lake, f"{prefix}/{split}",
                                      ((s["meta"]["key"], s) for s in part), shard_bytes)
        out[split] = stats
        log(f"{split}: {stats['samples']} samples from {stats['recordings']} recordings in "
            f"{len(stats['shards'])} shards")
    return out


def _materialize(spec: DatasetSpec, usable: pl.DataFrame,
                 features: dict[str, RecordingFeatures]) -> dict[str, list]:
    """Sample dicts per split in canonical order (upload_id, ts_ns, copy)."""
    out: dict[str, list] = {s: [] for s in SPLITS}
    scenario_ids = None
    if spec.labels.kind == "scenario":
        scenario_ids = {name: i for i, name in enumerate(SCENARIO_CLASSES)}
    for r in usable.sort("upload_id", "ts_ns").iter_rows(named=True):
        feats, i = features[r["upload_id"]], r["_row"]
        for copy in range(r["_copies"]):
            sample = {k: v[i] for k, v in feats.arrays.items()}
            if feats.lidar is not None:
                sample["lidar"] = feats.lidar[i]
            if feats.camera is not None:
                sample["camera"] = feats.camera[i]
            if scenario_ids is not None:
                sample["label"] = np.array(scenario_ids[r["scenario"]], dtype=np.int64)
            key = f"{r['upload_id'][:16]}_{r['ts_ns']}_{copy}"
            sample["meta"] = {
                "key": key, "upload_id": r["upload_id"], "robot_id": r["robot_id"],
                "robot_type": r["robot_type"], "region": r["region"], "date": r["date"],
                "ts_ns": r["ts_ns"], "scenario": r["scenario"],
                "corner_case_score": float(r["corner_case_score"]),
                "group": str(r[spec.balancing.by]), "split": r["split"], "copy": copy,
            }
            out[r["split"]].append(sample)
    return out


def _zscore(spec: DatasetSpec, samples: dict[str, list]) -> dict:
    """z-score IMU windows in place with mean/std of the train split's distinct samples."""
    w = spec.features.imu_window
    if not w or w.normalize != "zscore":
        return {}
    train = [s["imu"] for s in samples["train"] if s["meta"]["copy"] == 0]
    if not train:
        raise QualityGateFailed(f"dataset {spec.name} {spec.version}: the train split is empty, "
                                f"so there are no statistics to z-score the IMU windows with")
    flat = np.concatenate(train).astype(np.float64)
    mean, std = flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-6)
    for part in samples.values():
        for s in part:
            s["imu"] = ((s["imu"] - mean) / std).astype(np.float32)
    return {"imu": {"columns": list(IMU_COLUMNS), "mean": mean.tolist(), "std": std.tolist(),
                    "from": "train"}}


# --------------------------------------------------------------------------- registry

REGISTRY_SCHEMA = pa.schema([
    ("name", pa.string()), ("version", pa.string()), ("spec_hash", pa.string()),
    ("input_fingerprint", pa.string()), ("created_ns", pa.int64()),
    ("inputs", pa.string()), ("manifest_key", pa.string()),
    ("samples_train", pa.int64()), ("samples_val", pa.int64()), ("samples_test", pa.int64()),
    ("recordings", pa.int64()), ("missing_rate", pa.float64()), ("statistics", pa.string()),
])


def _register(lake: Store, manifest: dict) -> int | None:
    """One registry row per (name, version), whoever builds it at the same time."""
    splits = manifest["splits"]
    row = {
        "name": manifest["name"], "version": manifest["version"],
        "spec_hash": manifest["spec_hash"], "input_fingerprint": manifest["input_fingerprint"],
        "created_ns": manifest["created_ns"], "inputs": json.dumps(manifest["inputs"]),
        "manifest_key": manifest_key(manifest["name"], manifest["version"]),
        **{f"samples_{s}": splits[s]["samples"] for s in SPLITS},
        "recordings": len(manifest["split_of_recording"]),
        "missing_rate": manifest["quality"]["missing_rate"],
        "statistics": json.dumps({s: {k: v for k, v in splits[s].items() if k != "shards"}
                                  for s in SPLITS}),
    }
    version, _ = append_new_rows(lake, REGISTRY, [row], REGISTRY_SCHEMA, keys=("name", "version"))
    return version


def list_versions(lake: Store, name: str | None = None) -> pl.DataFrame:
    table = read_table(lake, REGISTRY)
    if table is None:
        return pl.DataFrame(schema=pl.from_arrow(REGISTRY_SCHEMA.empty_table()).schema)
    frame = pl.from_arrow(table)
    if name:
        frame = frame.filter(pl.col("name") == name)
    return frame.sort("name", "created_ns")


def compare_versions(lake: Store, name: str, a: str, b: str) -> pl.DataFrame:
    """Side-by-side figures of two versions: samples per split, per group and scenario of
    each split, label statistics (one row per figure, columns a, b and the change)."""
    if a == b:
        raise ValueError(f"compare two different versions of {name} (got {a} twice)")
    registry = list_versions(lake, name)
    stats = {}
    for v in (a, b):
        row = registry.filter(pl.col("version") == v)
        if not row.height:
            known = ", ".join(registry["version"].to_list()) or "none"
            raise KeyError(f"dataset {name} has no version {v} (registered: {known})")
        stats[v] = json.loads(row["statistics"][0])
    rows = []
    for split in SPLITS:
        sa, sb = stats[a][split], stats[b][split]
        rows.append((f"{split}.samples", sa["samples"], sb["samples"]))
        rows.append((f"{split}.recordings", sa["recordings"], sb["recordings"]))
        for section in ("groups", "scenarios"):
            for k in sorted(set(sa[section]) | set(sb[section])):
                rows.append((f"{split}.{section}.{k}", sa[section].get(k, 0),
                             sb[section].get(k, 0)))
        means_a, means_b = sa["labels"].get("mean"), sb["labels"].get("mean")
        if means_a is not None or means_b is not None:  # regression labels
            for j in range(len(means_a or means_b)):
                rows.append((f"{split}.label[{j}].mean", means_a[j] if means_a else None,
                             means_b[j] if means_b else None))
    frame = pl.DataFrame(rows, schema={"figure": pl.String, a: pl.Float64, b: pl.Float64},
                         orient="row")
    return frame.with_columns((pl.col(b) - pl.col(a)).alias("change"))
