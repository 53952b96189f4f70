"""Data skipping: delta_maintenance clusters the cleaned tables by (robot_id, ts_ns) as a
rewrite (same rows, same content checksum, audited), and a one-robot-hour query then
reads fewer of the partition's files (robolake.zorder)."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from robolake import maintenance, zorder
from robolake.simulate.partition_files import HOUR_NS, upload_frames, write_runs
from robolake.storage import open_store
from robolake.tables import delete_rows, open_table, read_table

KEY = "cleaned/imu"
DAY_NS = 20_605 * 24 * HOUR_NS  # 2026-06-01
PART = {"date": "2026-06-01", "robot_type": "amr", "region": "eu-west"}
ROBOT, HOUR = "robot-002", 5
RANGES = {"robot_id": (ROBOT, ROBOT), "ts_ns": (DAY_NS + HOUR * HOUR_NS,
                                                DAY_NS + (HOUR + 1) * HOUR_NS - 1)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """4 robots x 8 h at 0.5 Hz in 2-hour uploads, committed 2 per run: 8 small files."""
    base = tmp_path_factory.mktemp("skipping")
    lake = open_store(base / "lake")
    uploads = upload_frames(4, 8, 0.5, 2, DAY_NS, PART["date"])
    commits = write_runs(lake, KEY, uploads, per_run=2)
    expected = pl.concat(uploads).filter(
        (pl.col("robot_id") == ROBOT) & pl.col("ts_ns").is_between(*RANGES["ts_ns"])).height
    return base, lake, commits, sum(f.height for f in uploads), expected


def test_maintenance_sorts_cleaned_partition_keeping_rows_and_skipping_files(written):
    base, lake, commits, rows, expected = written
    assert commits == 8 and expected == 1800  # one robot-hour at 0.5 Hz
    before_version = open_table(lake, KEY).version()
    before_files, total_before = zorder.files_for(open_table(lake, KEY), PART, RANGES)
    target = sum(zorder.add_actions(open_table(lake, KEY))["size_bytes"]) // 16

    done = maintenance.maintain_table(lake, KEY, target_size=int(target))
    assert done.ok and done.partitions_zordered == 1 and done.files_removed == 8
    table = open_table(lake, KEY)
    assert table.version() == before_version + 1
    assert zorder.content_checksum(lake, KEY, table.version()) == zorder.content_checksum(
        lake, KEY, before_version)
    assert zorder.content_checksum(lake, KEY, table.version())[0] == rows
    after_files, total_after = zorder.files_for(table, PART, RANGES)
    assert total_before == 8 and total_after >= 12  # ~16 files of the target size
    assert len(before_files) == 3 and 1 <= len(after_files) <= 2  # of 8, then of ~16
    # the pruned files still hold the whole answer
    assert zorder.read_range(lake, KEY, after_files, RANGES).height == expected
    assert zorder.read_range(lake, KEY, before_files, RANGES).height == expected
    audit = read_table(lake, "ops/audit", filters={"target": KEY})
    assert audit.column("version").to_pylist().count(table.version()) == 1  # audited once

    again = maintenance.maintain_table(lake, KEY, target_size=int(target))  # nothing new
    assert again.ok and again.partitions_zordered == 0 and again.files_removed == 0
    assert len(open_table(lake, KEY).file_uris()) == total_after


def test_delta_rs_zorder_keeps_content_and_the_checksum_sees_a_lost_row(written):
    base, lake, commits, rows, _expected = written
    shutil.copytree(base / "lake", base / "zorder")
    copy = open_store(base / "zorder")
    as_written = zorder.content_checksum(copy, KEY, commits - 1)
    open_table(copy, KEY).restore(commits - 1)  # the 8 small files again
    done = zorder.zorder_table(copy, KEY, 10**9, method="zorder")
    assert done.partitions == [PART] and done.files_removed == 8 and done.rows == rows
    assert zorder.content_checksum(copy, KEY, open_table(copy, KEY).version()) == as_written
    assert zorder.zorder_table(copy, KEY, 10**9, method="zorder").partitions == []  # re-run

    version, deleted = delete_rows(copy, KEY, f"robot_id = '{ROBOT}' AND ts_ns < "
                                              f"{DAY_NS + 60 * 10**9}")
    assert deleted == 30 and version is not None  # 60 s at 0.5 Hz
    assert zorder.content_checksum(copy, KEY, version)[0] == rows - 30
    assert zorder.content_checksum(copy, KEY, version) != as_written


def test_a_write_during_the_rewrite_makes_it_plan_again_and_keeps_both(written, monkeypatch):
    base, _lake, commits, rows, _expected = written
    shutil.copytree(base / "lake", base / "race")
    lake = open_store(base / "race")
    open_table(lake, KEY).restore(commits - 1)  # the 8 small files again
    late = upload_frames(1, 1, 0.5, 1, DAY_NS, PART["date"], seed=9)[0].with_columns(
        pl.lit("robot-009").alias("robot_id"))
    real, calls = zorder.write_part_files, []

    def racing(*args, **kwargs):  # another writer commits while the first plan writes
        if not calls:
            write_runs(lake, KEY, [late], per_run=1)
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(zorder, "write_part_files", racing)
    done = zorder.zorder_table(lake, KEY, 10**9)
    assert done.partitions == [PART] and done.files_removed == 9  # planned again: 8 + late
    assert done.rows == rows + late.height == zorder.content_checksum(
        lake, KEY, open_table(lake, KEY).version())[0]
    assert len(open_table(lake, KEY).file_uris()) == 5  # one file per robot
