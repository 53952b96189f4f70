"""One recording: make the sensors' data, apply the faults, write the file, say what it holds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from robolake.simulate.draft import Draft
from robolake.simulate.faults import (
    FAULTS,
    FILE,
    MESSAGES,
    SIGNALS,
    Describe,
    apply_faults,
    normalise_faults,
)
from robolake.simulate.robots import REGIONS, RobotIdentity
from robolake.simulate.ros import Codec
from robolake.simulate.sensors import COUNT_RULE, SENSORS, Sensor
from robolake.simulate.writers import FORMATS, recording_file_name, sidecar_path, write_recording


def simulate_recording(path: Path, robot: RobotIdentity, start_ns: int, duration_s: float,
                       seed: int, fmt: str = "mcap", faults: Sequence[str] = (), *,
                       lidar_points: int = 512,
                       image_size: tuple[int, int] = (64, 48)) -> dict:
    """Write one recording; return its ground truth (JSON-serialisable dict).

    `path` is the file to write, or an existing folder to write
    `<robot_id>_<YYYYMMDDTHHMMSS>.<mcap|bag>` into. An existing file is replaced.
    """
    _check_arguments(robot, fmt, duration_s, lidar_points, image_size)
    start_ns = int(start_ns)
    kinds = normalise_faults(faults)
    path = _fresh_path(Path(path), robot, start_ns, fmt)
    rec = Draft.start(path, fmt, robot, seed, start_ns, duration_s, lidar_points, image_size)
    described = apply_faults(rec, kinds, SIGNALS) | apply_faults(rec, kinds, MESSAGES)
    codec = Codec(ros1=fmt == "bag")
    write_recording(path, fmt, codec, robot.as_dict() if rec.write_identity else None,
                    _messages(rec, codec))
    described |= apply_faults(rec, kinds, FILE)
    return _truth(rec, kinds, described)


def _check_arguments(robot: RobotIdentity, fmt: str, duration_s: float, lidar_points: int,
                     image_size: tuple[int, int]) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected 'mcap' or 'bag'")
    if robot.region not in REGIONS:
        raise ValueError(f"unknown region {robot.region!r} for {robot.robot_id}: "
                         f"expected one of {', '.join(REGIONS)}")
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if lidar_points < 1 or image_size[0] < 8 or image_size[1] < 8:
        raise ValueError("lidar_points must be >= 1 and image_size at least (8, 8)")


def _fresh_path(path: Path, robot: RobotIdentity, start_ns: int, fmt: str) -> Path:
    """The file to write (named after the robot and start inside a folder), with any
    earlier file and sidecar there removed."""
    if path.is_dir():
        path = path / recording_file_name(robot.robot_id, start_ns, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, sidecar_path(path)):
        stale.unlink(missing_ok=True)
    return path


def _messages(rec: Draft, codec: Codec) -> Iterator[tuple[Sensor, int, bytes, int, int]]:
    """Every message in log-time order (ties: sensor order), serialised, with its copies."""
    build = {s.key: rec.sources[s.key].messages(codec, s.frame_id) for s in SENSORS}
    keys = [s.key for s in SENSORS]
    all_t = np.concatenate([rec.log_ns[k] for k in keys])
    all_s = np.concatenate([np.full(rec.counts[k], j) for j, k in enumerate(keys)])
    all_i = np.concatenate([np.arange(rec.counts[k]) for k in keys])
    order = np.lexsort((all_i, all_s, all_t))
    stamps = {k: (v + rec.clock_offset_ns).tolist() for k, v in rec.log_ns.items()}
    logs = {k: v.tolist() for k, v in rec.log_ns.items()}
    for j, i in zip(all_s[order].tolist(), all_i[order].tolist(), strict=True):
        s = SENSORS[j]
        data = codec.serialize(build[s.key](i, stamps[s.key][i]), s.msgtype)
        yield s, logs[s.key][i], data, i, 2 if i in rec.duplicates[s.key] else 1


def _truth(rec: Draft, kinds: list[str], described: dict[str, Describe]) -> dict:
    topics = {s.topic: {
        "msgtype": s.msgtype if rec.fmt == "mcap" else s.ros1_msgtype,
        "sensor": s.key,
        "rate_hz": s.rate_hz,
        "period_ns": s.period_ns,
        "frame_id": s.frame_id,
        "nominal_count": rec.counts[s.key],
        "count": rec.counts[s.key] + len(rec.duplicates[s.key]),
    } for s in SENSORS}
    all_log = np.concatenate([rec.log_ns[s.key] for s in SENSORS])
    data = rec.path.read_bytes()
    quarantine = [k for k in kinds if FAULTS[k].quarantines]
    return {
        "file": rec.path.name,
        "sidecar": (sidecar_path(rec.path).name if rec.fmt == "bag" and rec.write_identity
                    else None),
        "format": rec.fmt,
        "identity": rec.robot.as_dict(),
        "seed": int(rec.seed),
        "date": datetime.fromtimestamp(rec.start_ns // 1_000_000_000, UTC).strftime("%Y-%m-%d"),
        "start_ns": int(all_log.min()) if all_log.size else rec.start_ns,
        "end_ns": int(all_log.max()) if all_log.size else rec.start_ns,
        "duration_s": float(rec.duration_s),
        "count_rule": COUNT_RULE,
        "topics": topics,
        "message_count": sum(t["count"] for t in topics.values()),
        "lidar_points": rec.lidar_points,
        "image_size": [int(rec.image_size[0]), int(rec.image_size[1])],
        "motion": rec.traj.summary(rec.duration_s, rec.origin),
        "faults": {kind: described[kind]() for kind in FAULTS if kind in described},
        "expected_raw_status": "quarantined" if quarantine else "accepted",
        "quarantine_faults": quarantine,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
