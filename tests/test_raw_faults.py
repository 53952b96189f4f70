"""Every simulator fault kind ends in the right raw status with an actionable reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robolake import raw
from robolake.simulate import FAULT_KINDS, simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table

# fault -> (status, words the first reason must contain)
EXPECTED = {
    "truncated": ("quarantined", "truncated"),
    "bad_magic": ("quarantined", "unknown format: first bytes b'NOT"),
    "no_identity": ("quarantined", "no robot identity"),
    "future_timestamps": ("quarantined", "timestamps in the future"),
    "duplicate_messages": ("flagged", "duplicate messages"),
    # invisible to the raw layer: the cleaned layer removes and counts them
    "lidar_far_returns": ("accepted", None),
    "imu_spikes": ("accepted", None),
    "gps_dropouts": ("accepted", None),
    "black_frames": ("accepted", None),
    "clock_offset": ("accepted", None),
}


def _ingest(landing_dir: Path, lake_dir: Path) -> dict[str, dict]:
    lake = open_store(lake_dir)
    raw.ingest_landing(open_store(landing_dir), lake)
    return {r["file_name"]: r for r in read_table(lake, raw.RAW_UPLOADS).to_pylist()}


@pytest.mark.parametrize("fmt", ["mcap", "bag"])
def test_every_fault_kind_gets_its_status(tmp_path: Path, fmt: str):
    assert set(EXPECTED) == set(FAULT_KINDS)
    faults = [f"{kind}:{i + 1}" for i, kind in enumerate(FAULT_KINDS)]  # robot-000 stays clean
    truth = simulate_fleet(tmp_path / "landing", robots=len(FAULT_KINDS) + 1, date="2026-11-20",
                           minutes=0.2, seed=5, fmt=fmt, faults=faults)
    rows = _ingest(tmp_path / "landing", tmp_path / "lake")
    assert len(rows) == len(truth["recordings"])
    for rec in truth["recordings"]:
        row = rows[rec["file"]]
        kinds = list(rec["faults"])
        if not kinds:
            assert (row["status"], row["quality_score"], row["reasons"]) == ("accepted", 100.0, [])
            assert row["message_count"] == rec["message_count"]
            assert {t["topic"]: t["count"] for t in row["topics"]} == {
                t: v["count"] for t, v in rec["topics"].items()}
            assert (row["start_ns"], row["end_ns"]) == (rec["start_ns"], rec["end_ns"])
            continue
        [kind] = kinds
        status, words = EXPECTED[kind]
        assert row["status"] == status, (kind, row["reasons"])
        assert status == "quarantined" or row["status"] == rec["expected_raw_status"] or (
            kind == "duplicate_messages")
        if words:
            assert row["reasons"][0].startswith(rec["file"] + ": "), row["reasons"]
            assert words in row["reasons"][0], (kind, row["reasons"])
        if kind == "duplicate_messages":
            count = rec["faults"]["duplicate_messages"]["count"]
            assert row["reasons"][0].startswith(f"{rec['file']}: {count} duplicate messages")
            assert 60 <= row["quality_score"] <= 90
        if status == "quarantined":
            assert row["quality_score"] == 0.0 and row["raw_key"].startswith("raw/quarantine/")
        else:
            assert row["raw_key"].startswith(f"raw/files/date=2026-11-20/robot_type="
                                             f"{rec['identity']['robot_type']}/")
    # no identity: waits under `unidentified`, never in a robot type's partition
    no_id = next(r for r in truth["recordings"] if "no_identity" in r["faults"])
    assert rows[no_id["file"]]["robot_type"] == raw.UNIDENTIFIED
    # the rest of each partition was ingested despite the broken files
    assert sum(r["status"] in ("accepted", "flagged") for r in rows.values()) == 7


def test_ground_truth_file_is_written(tmp_path: Path):
    truth = simulate_fleet(tmp_path, robots=2, date="2026-11-20", minutes=0.1, seed=1)
    on_disk = json.loads((tmp_path / "ground_truth.json").read_text())
    assert on_disk["recordings"] == truth["recordings"]
    assert {r["identity"]["robot_type"] for r in truth["recordings"]} == {
        "delivery", "warehouse_amr"}
