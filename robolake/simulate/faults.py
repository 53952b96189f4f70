"""Faults: each kind damages a recording in a known way and says what it did.

A fault is one function `(draft, rng) -> describe` and one entry in FAULTS. It
changes the draft at its stage (SIGNALS: sensor values; MESSAGES: log times,
stamps, copies, identity; FILE: the written file) and returns a function that
gives its part of the ground truth once the file is written (log times are
final only then). Each kind draws from its own random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robolake.contract import IMU_OUTLIER_NORM, LIDAR_MAX_RANGE_M
from robolake.simulate.lidar import LIDAR_MAX_CLEAN_RANGE_M
from robolake.simulate.sensors import SENSORS, TOPICS

if TYPE_CHECKING:
    from robolake.simulate.draft import Draft

# The public list; also the order of the faults' random streams: a new kind goes last.
FAULT_KINDS = (
    "duplicate_messages",
    "lidar_far_returns",
    "imu_spikes",
    "gps_dropouts",
    "black_frames",
    "truncated",
    "bad_magic",
    "no_identity",
    "future_timestamps",
    "clock_offset",
)

CLOCK_OFFSET_NS = 2_500_000_000
FUTURE_SHIFT_NS = 400 * 86_400 * 1_000_000_000
FUTURE_TAIL_S = 5.0
TRUNCATE_FRACTION = 0.6
BAD_MAGIC = {"mcap": b"NOTMCAP!", "bag": b"NOTABAG!"}
LIDAR_FAR_RANGE_M = (LIDAR_MAX_RANGE_M, 2 * LIDAR_MAX_RANGE_M)  # fault returns lie in (200, 400]

SIGNALS, MESSAGES, FILE = "signals", "messages", "file"
Describe = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    stage: str  # SIGNALS, MESSAGES or FILE: the stages run in that order
    apply: Callable[[Draft, np.random.Generator], Describe]
    quarantines: bool = False  # the raw layer must quarantine the recording, whatever its score


def _pick(rng: np.random.Generator, candidates: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(rng.choice(candidates, size=k, replace=False)).astype(np.int64)


def _interior(n: int, exclude: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """Indices 1..n-2 (so faults have clean neighbours on both sides) minus `exclude`."""
    idx = np.arange(1, n - 1) if n > 2 else np.arange(n)
    return np.setdiff1d(idx, np.asarray(exclude, dtype=np.int64))


# --------------------------------------------------------------------------- sensor values


def _lidar_far_returns(rec: Draft, rng: np.random.Generator) -> Describe:
    lidar, n = rec.sources["lidar"], rec.counts["lidar"]
    per_frame = max(1, rec.lidar_points // 16)
    for k in _pick(rng, _interior(n), max(2, n // 10)).tolist():
        idx = np.sort(rng.choice(rec.lidar_points, size=per_frame, replace=False))
        lidar.far[k] = (idx, rng.uniform(LIDAR_FAR_RANGE_M[0] + 5, LIDAR_FAR_RANGE_M[1] - 5,
                                         per_frame))
    frames = sorted(lidar.far)
    rec.damaged["lidar"] = np.array(frames, dtype=np.int64)
    far_per_frame = per_frame if frames else 0
    return lambda: {
        "topic": TOPICS["lidar"],
        "total_far_points": far_per_frame * len(frames),
        "frames_affected": len(frames),
        "log_times_ns": rec.log_times("lidar", frames),
        "far_points_per_frame": far_per_frame,
        "expected_kept_points_per_frame": rec.lidar_points - far_per_frame,
        "points_per_frame": rec.lidar_points,
        "far_range_m": list(LIDAR_FAR_RANGE_M),
        "clean_max_range_m": LIDAR_MAX_CLEAN_RANGE_M,
    }


def _imu_spikes(rec: Draft, rng: np.random.Generator) -> Describe:
    imu, n = rec.sources["imu"], rec.counts["imu"]
    spikes = _pick(rng, _interior(n), max(3, n // 200))
    direction = rng.normal(size=(len(spikes), 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    imu.acc[spikes] = direction * rng.uniform(30.0, 45.0, (len(spikes), 1))
    rec.damaged["imu"] = spikes
    norms = np.linalg.norm(imu.acc[spikes], axis=1) if len(spikes) else np.zeros(0)
    return lambda: {
        "topic": TOPICS["imu"],
        "count": len(spikes),
        "log_times_ns": rec.log_times("imu", spikes),
        "threshold_mps2": IMU_OUTLIER_NORM,
        "min_norm_mps2": float(norms.min()) if len(norms) else None,
    }


def _gps_dropouts(rec: Draft, rng: np.random.Generator) -> Describe:
    """A run of fixes without a fix (status -1), and a few scattered NaN fixes."""
    gps, m = rec.sources["gps"], rec.counts["gps"]
    length = max(2, m // 6)
    first = min(max(1, int(m * 0.4)), max(m - 1 - length, 0))
    no_fix = np.arange(first, min(first + length, m), dtype=np.int64)
    gps.status[no_fix] = -1
    nan_fix = _pick(rng, _interior(m, no_fix), max(1, m // 30))
    gps.lat[nan_fix] = np.nan
    gps.lon[nan_fix] = np.nan
    invalid = np.union1d(no_fix, nan_fix)
    return lambda: {
        "topic": TOPICS["gps"],
        "count": len(invalid),
        "no_fix_count": len(no_fix),
        "nan_count": len(nan_fix),
        "log_times_ns": rec.log_times("gps", invalid),
        "no_fix_log_times_ns": rec.log_times("gps", no_fix),
        "nan_log_times_ns": rec.log_times("gps", nan_fix),
    }


def _black_frames(rec: Draft, rng: np.random.Generator) -> Describe:
    camera, n = rec.sources["camera"], rec.counts["camera"]
    camera.black = _pick(rng, _interior(n), max(2, n // 50))
    rec.damaged["camera"] = camera.black
    return lambda: {
        "topic": TOPICS["camera"],
        "count": len(camera.black),
        "log_times_ns": rec.log_times("camera", camera.black),
    }


# --------------------------------------------------------------------------- messages


def _duplicate_messages(rec: Draft, rng: np.random.Generator) -> Describe:
    """Some messages written twice (same log time), never one another fault changed."""
    for key, share in (("imu", 100), ("lidar", 50), ("camera", 100)):
        n = rec.counts[key]
        chosen = _pick(rng, _interior(n, rec.damaged[key]), max(1, n // share))
        rec.duplicates[key] = set(chosen.tolist())

    def describe() -> dict[str, Any]:
        copied = {key: idx for key, idx in rec.duplicates.items() if idx}
        per_topic = {TOPICS[key]: len(idx) for key, idx in copied.items()}
        return {"count": sum(per_topic.values()), "per_topic": per_topic,
                "log_times_ns": {TOPICS[key]: rec.log_times(key, idx)
                                 for key, idx in copied.items()}}

    return describe


def _clock_offset(rec: Draft, rng: np.random.Generator) -> Describe:
    rec.clock_offset_ns = CLOCK_OFFSET_NS
    return lambda: {"offset_ns": CLOCK_OFFSET_NS, "rule": "header.stamp = log_time + offset_ns"}


def _future_timestamps(rec: Draft, rng: np.random.Generator) -> Describe:
    """The last FUTURE_TAIL_S seconds of every topic logged FUTURE_SHIFT_NS later."""
    cutoff = rec.start_ns + int(round((rec.duration_s - FUTURE_TAIL_S) * 1e9))
    for arr in rec.log_ns.values():
        arr[arr >= cutoff] += FUTURE_SHIFT_NS

    def describe() -> dict[str, Any]:
        per_topic = {}
        for s in SENSORS:
            shifted = np.flatnonzero(rec.log_ns[s.key] != rec.base_ns[s.key])
            per_topic[s.topic] = (len(shifted)
                                  + len(rec.duplicates[s.key].intersection(shifted.tolist())))
        return {"shift_ns": FUTURE_SHIFT_NS, "cutoff_ns": cutoff,
                "count": sum(per_topic.values()), "per_topic": per_topic}

    return describe


def _no_identity(rec: Draft, rng: np.random.Generator) -> Describe:
    rec.write_identity = False
    return lambda: {"metadata_record": False, "sidecar": False}


# --------------------------------------------------------------------------- the file


def _bad_magic(rec: Draft, rng: np.random.Generator) -> Describe:
    with open(rec.path, "r+b") as f:
        f.write(BAD_MAGIC[rec.fmt])
    return lambda: {"magic_written": BAD_MAGIC[rec.fmt].decode()}


def _truncated(rec: Draft, rng: np.random.Generator) -> Describe:
    original_size = rec.path.stat().st_size
    cut = int(original_size * TRUNCATE_FRACTION)
    with open(rec.path, "r+b") as f:
        f.truncate(cut)
    return lambda: {"original_size": original_size, "truncated_size": cut,
                    "note": "topics, counts and end_ns describe the uncut file"}


# In the order a recording's truth lists them (and, within a stage, they apply).
FAULTS: dict[str, Fault] = {
    "duplicate_messages": Fault(MESSAGES, _duplicate_messages),
    "lidar_far_returns": Fault(SIGNALS, _lidar_far_returns),
    "imu_spikes": Fault(SIGNALS, _imu_spikes),
    "gps_dropouts": Fault(SIGNALS, _gps_dropouts),
    "black_frames": Fault(SIGNALS, _black_frames),
    "clock_offset": Fault(MESSAGES, _clock_offset),
    "future_timestamps": Fault(MESSAGES, _future_timestamps, quarantines=True),
    "no_identity": Fault(MESSAGES, _no_identity, quarantines=True),
    "bad_magic": Fault(FILE, _bad_magic, quarantines=True),
    "truncated": Fault(FILE, _truncated, quarantines=True),
}
if set(FAULTS) != set(FAULT_KINDS):
    raise RuntimeError("FAULTS and FAULT_KINDS must name the same kinds")

# A recording with one of these faults must end up in quarantine, whatever its score.
QUARANTINE_FAULTS = tuple(k for k in FAULT_KINDS if FAULTS[k].quarantines)


def apply_faults(rec: Draft, kinds: Sequence[str], stage: str) -> dict[str, Describe]:
    return {kind: fault.apply(rec, rec.rngs[kind]) for kind, fault in FAULTS.items()
            if kind in kinds and fault.stage == stage}


def fault_list(faults: Sequence[str] | str) -> list[str]:
    """A comma-separated string or a sequence, as a list."""
    if isinstance(faults, str):
        return [f for f in faults.split(",") if f.strip()]
    return list(faults)


def normalise_faults(faults: Sequence[str] | str) -> list[str]:
    kinds = []
    for f in fault_list(faults):
        kind = f.strip()
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        kinds.append(kind)
    return [k for k in FAULT_KINDS if k in kinds]  # canonical order, no repeats
