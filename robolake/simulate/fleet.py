"""A fleet day: one recording per robot, staggered through the day, with faults assigned."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from robolake.simulate.faults import FAULT_KINDS, fault_list
from robolake.simulate.recording import simulate_recording
from robolake.simulate.robots import REGIONS, ROBOT_TYPES, RobotIdentity
from robolake.simulate.writers import FORMATS, recording_file_name

FLEET_START_HOUR_UTC = 8
FLEET_STAGGER_S = 7 * 60


def assign_faults(robots: int, faults: Sequence[str] | str) -> list[list[str]]:
    """Fault kinds per robot index. 'kind:N' targets robot N; a bare 'kind' goes
    round-robin from the last robot backwards, so robot 0 stays clean longest."""
    out: list[list[str]] = [[] for _ in range(robots)]
    bare = 0
    for spec in fault_list(faults):
        kind, _, target = spec.strip().partition(":")
        kind = kind.strip()
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} in {spec!r}: expected one of "
                             f"{', '.join(FAULT_KINDS)}, optionally as kind:ROBOT_INDEX")
        if target.strip():
            try:
                i = int(target)
            except ValueError:
                raise ValueError(f"fault {spec!r}: robot index {target!r} is not an integer"
                                 ) from None
            if not 0 <= i < robots:
                raise ValueError(f"fault {spec!r}: robot index {i} outside 0..{robots - 1}")
        else:
            if robots < 1:
                raise ValueError(f"fault {spec!r} given but there are no robots")
            i = (robots - 1 - bare) % robots
            bare += 1
        if kind not in out[i]:
            out[i].append(kind)
    return out


def fleet_identity(index: int, robot_types: Sequence[str] = ROBOT_TYPES[:2]) -> RobotIdentity:
    regions = list(REGIONS)
    return RobotIdentity(f"robot-{index:03d}", robot_types[index % len(robot_types)],
                         regions[index % len(regions)])


def fleet_start_ns(date: str, index: int, minutes: float) -> int:
    """`date` 08:00 UTC + index * 7 min; wraps so no recording crosses midnight."""
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"date {date!r}: expected YYYY-MM-DD") from None
    first = day + timedelta(hours=FLEET_START_HOUR_UTC)
    window_s = (24 - FLEET_START_HOUR_UTC) * 3600 - minutes * 60 - 1
    slots = max(1, int(window_s // FLEET_STAGGER_S) + 1)
    return int(first.timestamp()) * 1_000_000_000 + (index % slots) * FLEET_STAGGER_S * 10**9


def simulate_fleet(out_dir: Path, robots: int, date: str, minutes: float, seed: int,
                   fmt: str = "mcap", faults: Sequence[str] = (), *,
                   robot_types: Sequence[str] = ROBOT_TYPES[:2]) -> dict:
    """Write one recording per robot + out_dir/ground_truth.json; return the ground truth."""
    if robots < 1:
        raise ValueError(f"robots must be >= 1, got {robots}")
    if minutes <= 0:
        raise ValueError(f"minutes must be > 0, got {minutes}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected 'mcap' or 'bag'")
    unknown = [t for t in robot_types if t not in ROBOT_TYPES]
    if unknown or not robot_types:
        raise ValueError(f"robot types {unknown or '[]'}: expected some of {ROBOT_TYPES}")
    fleet_start_ns(date, 0, minutes)  # validates the date before anything is written
    per_robot = assign_faults(robots, faults)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recordings = []
    for i in range(robots):
        robot = fleet_identity(i, robot_types)
        start = fleet_start_ns(date, i, minutes)
        recordings.append(simulate_recording(
            out_dir / recording_file_name(robot.robot_id, start, fmt), robot, start,
            minutes * 60.0, seed, fmt, per_robot[i]))
    truth = {
        "seed": int(seed),
        "date": date,
        "minutes": float(minutes),
        "robots": robots,
        "format": fmt,
        "faults_requested": list(faults) if not isinstance(faults, str) else [faults],
        "recordings": recordings,
    }
    (out_dir / "ground_truth.json").write_text(json.dumps(truth, indent=2, sort_keys=False) + "\n")
    return truth
