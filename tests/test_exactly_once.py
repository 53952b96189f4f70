"""Exactly once under concurrent writers: real `robolake ingest` processes at once over one
landing zone, then every table checked row for row against a single-writer reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from robolake import cleaned, raw
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table
from tests.conftest import land

# one partition for all: every process works on the same keys at the same time
SICK = {"robot_id": "sick-01", "robot_type": "delivery", "region": "eu-west"}
DAY = "2026-11-20"
PROCESSES = 3
TRIALS = 3

# tables with a key of their own (sensor rows of one upload may share a stamp: the SICK
# radar splits scans; those tables are compared row for row with the reference instead)
TABLE_KEYS = {
    raw.RAW_UPLOADS: ["upload_id", "landing_key", "date", "robot_type"],
    raw.LANDING_INDEX: ["landing_key", "version"],
    cleaned.TABLES["report"]: ["upload_id"],
}


def _landing(root: Path, shared_data: Path) -> Path:
    landing = root / "landing"
    simulate_fleet(landing / "fleet", robots=2, date=DAY, minutes=0.2, seed=3,
                   robot_types=["delivery"])
    land(landing, shared_data / "sick_rms1000_lms1000_movement_off.bag", SICK)
    return landing


def _ingest_processes(landing: Path, lake: Path, home: Path,
                      n: int) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "ROBOLAKE_DECODE_WORKERS": "1"}
    cmd = [sys.executable, "-m", "robolake_assets.cli", "ingest", "--through", "cleaned",
           "--landing", str(landing), "--lake", str(lake)]
    procs = [subprocess.Popen(cmd, env=env, cwd=landing.parent, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    return [subprocess.CompletedProcess(cmd, p.wait(timeout=600), *p.communicate())
            for p in procs]


def _contents(lake_dir: Path) -> dict[str, pl.DataFrame]:
    """Every table's rows without the columns that record when or by whom they were made."""
    lake = open_store(lake_dir)
    out = {}
    for key in [raw.RAW_UPLOADS, raw.LANDING_INDEX, *cleaned.TABLES.values()]:
        frame = pl.from_arrow(read_table(lake, key))
        frame = frame.drop([c for c in ("ingested_ns", "probed_ns", "cleaned_ns", "latency_s")
                            if c in frame.columns])
        out[key] = frame.sort(frame.columns)
    return out


@pytest.mark.slow
def test_concurrent_ingest_processes_write_every_row_once(shared_data: Path, tmp_path: Path):
    landing = _landing(tmp_path, shared_data)
    ref = open_store(tmp_path / "ref-lake")
    for day, robot_type in raw.ingest_landing(open_store(landing), ref):
        cleaned.clean_partition(ref, day, robot_type)
    expected = _contents(tmp_path / "ref-lake")
    assert expected[raw.RAW_UPLOADS].height == 3
    assert expected[cleaned.TABLES["imu"]].height > 0

    for trial in range(TRIALS):
        lake, home = tmp_path / f"lake{trial}", tmp_path / f"home{trial}"
        runs = _ingest_processes(landing, lake, home, PROCESSES)
        # every process succeeds, first-time instance creation included
        assert [r.returncode for r in runs] == [0] * PROCESSES, [r.stderr[-2000:] for r in runs]
        got = _contents(lake)
        for key, frame in expected.items():
            assert got[key].height == frame.height, (trial, key)
            assert got[key].equals(frame), (trial, key)
        for key, cols in TABLE_KEYS.items():
            assert got[key].select(cols).is_duplicated().sum() == 0, (trial, key)
    # and a later run has nothing to do
    [again] = _ingest_processes(landing, lake, home, 1)
    assert "0 partition(s) to ingest" in again.stdout, again.stdout
