"""Dataset builds end to end on a simulated fleet: splits, balancing, manifest statistics,
z-scoring, immutability, the feature cache, the registry, quality gates and the loader.

Spec validation errors are covered in tests/test_dataset_spec.py.

Day 1 is 8 simulated robots (4 delivery, 4 warehouse_amr) plus one quadruped, so the
quadruped is a rare robot type (rarity 1 - 600/2400 = 0.75): its frames are the corner
cases that balancing multiplies. Day 2 (3 robots) grows a second lake for the cache,
immutability and registry tests.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import simplejpeg
import torch

from robolake import cleaned, raw
from robolake.contract import CORNER_CASE_THRESHOLD
from robolake.datasets.build import (
    DatasetVersionExists,
    QualityGateFailed,
    assign_splits,
    balance_copies,
    balance_weights,
    build_dataset,
    compare_versions,
    geodetic_to_enu,
    list_versions,
)
from robolake.datasets.loader import load, rank_stream_length, read_manifest
from robolake.datasets.shards import iter_shard, manifest_key
from robolake.datasets.spec import parse_spec
from robolake.simulate import REGIONS, RobotIdentity, simulate_fleet, simulate_recording
from robolake.storage import open_store
from robolake.tables import read_table

DAY1, DAY2 = "2026-11-20", "2026-11-21"
FLEET_TYPES = ("delivery", "warehouse_amr")
SPLITS = ("train", "val", "test")
IMU_WINDOW, GPS_HISTORY = 20, 10


# --------------------------------------------------------------------------- fixtures


def _ingest_and_clean(landing: Path, lake) -> list[tuple[str, str]]:
    parts = list(raw.ingest_landing(open_store(landing), lake))
    for part in parts:
        cleaned.clean_partition(lake, *part)
    return parts


def _spec_data(version: str = "1.0.0", name: str = "ego", start: str = DAY1, end: str = DAY1,
               **sections) -> dict:
    data = {
        "name": name, "version": version, "description": "test set",
        "sources": {"dates": {"start": start, "end": end}},
        "features": {"imu_window": {"size": IMU_WINDOW, "stride": 10},
                     "gps_trajectory": {"history": GPS_HISTORY}},
        "labels": {"kind": "ego_motion"},
        # ~6 samples per shard: many shards, so shuffling and worker shard-skipping matter
        "output": {"shard_size_mb": 0.02, "splits": {"train": 0.8, "val": 0.1, "test": 0.1}},
        "quality_gates": {"min_samples": 50},
        # GPS as recorded (simulated robots): tests/test_privacy.py covers masked
        "privacy": "approved",
        "approval": {"by": "tests", "when": "2026-12-01",
                     "reason": "test data from the simulator"},
    }
    data.update(sections)
    return data


def _spec(*args, **kwargs):
    return parse_spec(_spec_data(*args, **kwargs))


def _aligned_uploads(lake, date: str | None = None) -> set[str]:
    frame = pl.from_arrow(read_table(lake, cleaned.TABLES["aligned"],
                                     columns=["upload_id", "date"]))
    if date:
        frame = frame.filter(pl.col("date") == date)
    return set(frame["upload_id"].to_list())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("datasets")
    simulate_fleet(base / "day1", robots=8, date=DAY1, minutes=1, seed=3,
                   robot_types=FLEET_TYPES)
    start = int(datetime.fromisoformat(f"{DAY1}T12:00:00+00:00").timestamp()) * 10**9
    simulate_recording(base / "day1", RobotIdentity("robot-100", "quadruped", "eu-west"),
                       start, 60.0, seed=5)
    return base


@pytest.fixture(scope="module")
def lake(workdir):
    lake = open_store(workdir / "lake")
    parts = _ingest_and_clean(workdir / "day1", lake)
    assert parts == [(DAY1, "delivery"), (DAY1, "quadruped"), (DAY1, "warehouse_amr")]
    return lake


@pytest.fixture(scope="module")
def plain(lake):
    """ego 1.0.0: day 1, no balancing (every sample once)."""
    result = build_dataset(lake, _spec())
    assert result.created
    return result


def _read_split(lake, manifest: dict, split: str) -> list[dict]:
    return [s for shard in manifest["splits"][split]["shards"]
            for s in iter_shard(lake.root / shard["key"])]


@pytest.fixture(scope="module")
def plain_samples(lake, plain) -> dict[str, list[dict]]:
    return {split: _read_split(lake, plain.manifest, split) for split in SPLITS}


def _without_builds(folder: str, names: list[str]) -> set[str]:
    """copytree filter: a lake's raw and cleaned layers without dataset versions or cache."""
    if Path(folder).name == "features":
        return {"cache"} & set(names)
    return {"datasets"} & set(names)


@pytest.fixture(scope="module")
def grown(workdir, lake):
    """A second lake: version 1.0.0 over November with day 1 only, then day 2 lands;
    1.1.0 is the same spec over both days, 1.2.0 changes the IMU transform."""
    # day 1 as ingested into the first lake (cheaper than ingesting again), with no builds
    shutil.copytree(lake.root, workdir / "lake_grown", ignore=_without_builds)
    lake = open_store(workdir / "lake_grown")
    assert not (lake.root / "datasets").exists() and not lake.exists("features/cache")
    month = {"start": "2026-11-01", "end": "2026-11-30"}
    a = build_dataset(lake, _spec("1.0.0", **month))
    # 2 delivery + 1 warehouse_amr: fleet shares change, so every old frame's rarity does
    simulate_fleet(workdir / "day2", robots=3, date=DAY2, minutes=1, seed=4,
                   robot_types=FLEET_TYPES)
    assert _ingest_and_clean(workdir / "day2", lake) == [(DAY2, "delivery"),
                                                          (DAY2, "warehouse_amr")]
    refused = None
    try:
        build_dataset(lake, _spec("1.0.0", **month))
    except DatasetVersionExists as exc:
        refused = exc
    b = build_dataset(lake, _spec("1.1.0", **month))
    c = build_dataset(lake, _spec("1.2.0", **month, features={
        "imu_window": {"size": 10, "stride": 10}, "gps_trajectory": {"history": GPS_HISTORY}}))
    return SimpleNamespace(lake=lake, a=a, b=b, c=c, refused=refused,
                           day1=_aligned_uploads(lake, DAY1), day2=_aligned_uploads(lake, DAY2))


def _keys(loader) -> list[str]:
    """Sample keys in the order the loader yields them (samples or collated batches)."""
    out: list[str] = []
    for item in loader:
        key = item["key"]
        out.extend(key if isinstance(key, list) else [key])
    return out


# --------------------------------------------------------------------------- splits


def test_splits_by_recording_without_leakage(lake, plain, plain_samples):
    recordings = _aligned_uploads(lake, DAY1)
    assert len(recordings) == 9
    in_shards = {split: {s["meta"]["upload_id"] for s in plain_samples[split]}
                 for split in SPLITS}
    # every recording in exactly one split, read from the shards themselves
    assert sorted(u for ids in in_shards.values() for u in ids) == sorted(recordings)
    assert [len(in_shards[s]) for s in SPLITS] == [7, 1, 1]  # 0.8/0.1/0.1 of 9, rounded
    for split in SPLITS:
        assert {s["meta"]["split"] for s in plain_samples[split]} == {split}
        assert plain.manifest["splits"][split]["recordings"] == len(in_shards[split])
    of_recording = plain.manifest["split_of_recording"]
    assert of_recording == {u: s for s, ids in in_shards.items() for u in ids}
    assert of_recording == assign_splits(sorted(recordings), {"train": 0.8, "val": 0.1,
                                                              "test": 0.1})


def test_assign_splits_is_deterministic_and_respects_fractions():
    ids = [f"recording-{i:03d}" for i in range(100)]
    fractions = {"train": 0.7, "val": 0.2, "test": 0.1}
    first = assign_splits(ids, fractions)
    # input order and repeats do not matter: only the set of recordings does
    assert assign_splits(list(reversed(ids)) + ids[:10], fractions) == first
    assert Counter(first.values()) == {"train": 70, "val": 20, "test": 10}
    assert Counter(assign_splits(ids, {"train": 0.8, "val": 0.1, "test": 0.1}).values()) == {
        "train": 80, "val": 10, "test": 10}
    for n in (10, 37, 51):
        counts = Counter(assign_splits(ids[:n], fractions).values())
        for split, fraction in fractions.items():
            assert abs(counts[split] - fraction * n) < 1, (n, split, counts)
    # few recordings: each split with a fraction > 0 still gets one
    assert Counter(assign_splits(ids[:3], {"train": 0.8, "val": 0.1, "test": 0.1}).values()) == {
        "train": 1, "val": 1, "test": 1}
    assert Counter(assign_splits(ids[:2], {"train": 0.9, "val": 0.1, "test": 0.0}).values()) == {
        "train": 1, "val": 1}
    assert set(assign_splits(ids[:5], {"train": 1.0, "val": 0.0, "test": 0.0}).values()) == {
        "train"}


# --------------------------------------------------------------------------- balancing


def _shares(copies: np.ndarray, mask: np.ndarray) -> float:
    return copies[mask].sum() / copies.sum()


def test_balance_weights_and_copies_give_expected_proportions():
    groups = np.array(["a"] * 8000 + ["b"] * 2000)
    corner = np.arange(10_000) % 10 == 0  # 10 % corner cases in each group
    is_a = groups == "a"

    copies = balance_copies(balance_weights(groups, corner, {"a": 1, "b": 1}, 3.0), seed=7)
    # by hand: each group's weight is (0.9 + 0.1 * 3) = 1.2 -> a and b half each; corner
    # cases carry 0.3 of each group's 1.2 -> a quarter of the samples
    assert abs(copies.sum() - 10_000) < 100  # the total stays about the same
    assert _shares(copies, is_a) == pytest.approx(0.5, abs=0.02)
    assert _shares(copies, corner) == pytest.approx(0.25, abs=0.02)
    ratio = copies[corner & is_a].mean() / copies[~corner & is_a].mean()
    assert ratio == pytest.approx(3.0, rel=0.1)
    # stochastic rounding with a fixed seed: reproducible
    assert np.array_equal(copies, balance_copies(
        balance_weights(groups, corner, {"a": 1, "b": 1}, 3.0), seed=7))

    # weights 1:3 -> b holds three quarters; a group without a weight counts 1
    copies = balance_copies(balance_weights(groups, corner, {"a": 1, "b": 3}, 1.0), seed=1)
    assert _shares(copies, ~is_a) == pytest.approx(0.75, abs=0.02)
    copies = balance_copies(balance_weights(groups, corner, {"b": 1}, 1.0), seed=1)
    assert _shares(copies, is_a) == pytest.approx(0.5, abs=0.02)

    # no weights: natural sizes; the multiplier alone: 0.3 / (0.3 + 0.9) = 0.25 corner cases
    assert np.array_equal(balance_copies(balance_weights(groups, corner, {}, 1.0), seed=1),
                          np.ones(10_000, dtype=np.int64))
    copies = balance_copies(balance_weights(groups, corner, {}, 3.0), seed=2)
    assert _shares(copies, is_a) == pytest.approx(0.8, abs=0.02)
    assert _shares(copies, corner) == pytest.approx(0.25, abs=0.02)
    assert len(balance_copies(np.zeros(0), seed=1)) == 0


def test_balancing_end_to_end(lake, plain):
    all_train = {"output": {"shard_size_mb": 0.02,
                            "splits": {"train": 1.0, "val": 0.0, "test": 0.0}}}
    natural = build_dataset(lake, _spec("2.0.0", **all_train))
    counts = natural.manifest["splits"]["train"]["groups"]
    total = natural.manifest["splits"]["train"]["samples"]
    assert total == plain.manifest["quality"]["samples"]  # every usable sample, once
    assert counts["quadruped"] < total / 6  # 1 of 9 recordings: far from a third
    corner = natural.manifest["splits"]["train"]["corner_cases"]
    assert corner >= counts["quadruped"]  # the rare type's frames are all corner cases

    equal = build_dataset(lake, _spec("2.1.0", **all_train, balancing={
        "by": "robot_type", "weights": {t: 1.0 for t in counts}}))
    samples = _read_split(lake, equal.manifest, "train")
    by_group = Counter(s["meta"]["group"] for s in samples)
    assert by_group == equal.manifest["splits"]["train"]["groups"]
    assert abs(len(samples) - total) < 0.03 * total
    for group in counts:
        assert by_group[group] / len(samples) == pytest.approx(1 / 3, abs=0.04), by_group
    copies = Counter((s["meta"]["upload_id"], s["meta"]["ts_ns"]) for s in samples)
    assert max(copies.values()) >= 3  # quadruped frames appear several times

    boosted = build_dataset(lake, _spec("2.2.0", **all_train, balancing={
        "corner_case_multiplier": 3.0}))
    stats = boosted.manifest["splits"]["train"]
    c = corner / total
    assert stats["corner_cases"] / stats["samples"] == pytest.approx(3 * c / (3 * c + 1 - c),
                                                                      abs=0.03)


# --------------------------------------------------------------------------- manifest


def _describe(values: np.ndarray) -> dict:
    flat = values.astype(np.float64).reshape(-1, values.shape[-1])
    return {"count": len(flat), "mean": flat.mean(axis=0), "std": flat.std(axis=0),
            "min": flat.min(axis=0), "max": flat.max(axis=0)}


def test_manifest_statistics_equal_the_shards(lake, plain, plain_samples):
    assert sum(plain.samples.values()) == plain.manifest["quality"]["samples"]
    for split in SPLITS:
        samples, stats = plain_samples[split], plain.manifest["splits"][split]
        meta = [s["meta"] for s in samples]
        assert stats["samples"] == len(samples) > 0
        assert stats["recordings"] == len({m["upload_id"] for m in meta})
        assert stats["groups"] == Counter(m["group"] for m in meta)
        assert stats["robot_types"] == Counter(m["robot_type"] for m in meta)
        assert stats["scenarios"] == Counter(m["scenario"] for m in meta)
        assert stats["corner_cases"] == sum(m["corner_case_score"] >= CORNER_CASE_THRESHOLD
                                            for m in meta)
        recomputed = {"imu": _describe(np.stack([s["imu"] for s in samples])),
                      "gps": _describe(np.stack([s["gps"] for s in samples]))}
        assert set(stats["features"]) == {"imu", "gps"}
        for name, expected in recomputed.items():
            got = stats["features"][name]
            assert got["count"] == expected["count"]
            for figure in ("mean", "std", "min", "max"):
                assert got[figure] == pytest.approx(expected[figure].tolist(), rel=1e-9,
                                                    abs=1e-12), (split, name, figure)
        labels = _describe(np.stack([s["label"] for s in samples]))
        assert stats["labels"]["count"] == labels["count"] == len(samples)
        assert stats["labels"]["mean"] == pytest.approx(labels["mean"].tolist(), rel=1e-9)
        assert stats["labels"]["std"] == pytest.approx(labels["std"].tolist(), rel=1e-9)
        # the shard list: sample counts and sizes as on disk
        for shard in stats["shards"]:
            path = lake.root / shard["key"]
            assert shard["bytes"] == path.stat().st_size
            assert shard["samples"] == sum(1 for _ in iter_shard(path))
        assert len(stats["shards"]) > 1
    # sample shapes and values the shards promise
    sample = plain_samples["train"][0]
    assert sample["imu"].shape == (IMU_WINDOW, 6) and sample["imu"].dtype == np.float32
    assert sample["gps"].shape == (GPS_HISTORY, 3) and sample["label"].shape == (2,)
    gps = np.stack([s["gps"] for s in plain_samples["train"]])
    assert np.all(gps[:, -1] == 0)  # positions are relative to the sampled frame
    assert np.all(np.stack([s["label"] for s in plain_samples["train"]])[:, 0] >= 0)  # speed


def test_zscore_with_train_statistics(lake, plain, plain_samples):
    norm = plain.manifest["normalization"]["imu"]
    assert norm["from"] == "train" and norm["columns"] == ["ax", "ay", "az", "gx", "gy", "gz"]
    distinct = [s["imu"] for s in plain_samples["train"] if s["meta"]["copy"] == 0]
    flat = np.concatenate(distinct).astype(np.float64)
    assert flat.mean(axis=0) == pytest.approx(np.zeros(6), abs=1e-5)
    assert flat.std(axis=0) == pytest.approx(np.ones(6), abs=1e-4)
    assert norm["mean"][2] == pytest.approx(9.8, abs=0.5)  # gravity on az, before scaling

    # val and test: un-scaling with the train statistics gives the IMU rows of cleaned/imu
    mean, std = np.array(norm["mean"]), np.array(norm["std"])
    for split in ("val", "test"):
        sample = plain_samples[split][len(plain_samples[split]) // 2]
        upload, ts = sample["meta"]["upload_id"], sample["meta"]["ts_ns"]
        imu = pl.from_arrow(read_table(lake, cleaned.TABLES["imu"],
                                       columns=["topic", "ts_ns", "ax", "ay", "az", "gx", "gy",
                                                "gz"], filters={"upload_id": upload}))
        main = Counter(imu["topic"].to_list()).most_common(1)[0][0]
        rows = imu.filter((pl.col("topic") == main) & (pl.col("ts_ns") <= ts)).sort("ts_ns")
        expected = rows.drop("topic", "ts_ns").tail(IMU_WINDOW).to_numpy()
        assert sample["imu"] * std + mean == pytest.approx(expected, abs=1e-4)


# --------------------------------------------------------------------------- immutability


def _files(lake, name: str, version: str) -> dict[str, int]:
    root = lake.root / "datasets" / name / version
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file()}


def test_rebuilding_the_same_spec_changes_nothing(lake, plain):
    before = _files(lake, "ego", "1.0.0")
    manifest_bytes = (lake.root / manifest_key("ego", "1.0.0")).read_bytes()
    again = build_dataset(lake, _spec())
    assert again.created is False
    assert again.manifest["created_ns"] == plain.manifest["created_ns"]
    assert (lake.root / manifest_key("ego", "1.0.0")).read_bytes() == manifest_bytes
    assert _files(lake, "ego", "1.0.0") == before and len(before) > 3
    registry = list_versions(lake, "ego").filter(pl.col("version") == "1.0.0")
    assert registry.height == 1


def test_same_version_with_a_different_spec_is_refused(lake, plain):
    for changes in ({"description": "something else"},
                    {"sources": {"dates": {"start": DAY1, "end": DAY1},
                                 "filters": {"robot_type": list(FLEET_TYPES)}}}):
        with pytest.raises(DatasetVersionExists) as err:
            build_dataset(lake, _spec(**changes))
        message = str(err.value)
        assert "dataset ego version 1.0.0 already exists" in message
        assert "a different spec" in message and "bump `version`" in message
    assert build_dataset(lake, _spec()).manifest["created_ns"] == plain.manifest["created_ns"]


def test_same_spec_after_new_data_is_refused(grown):
    assert grown.refused is not None
    message = str(grown.refused)
    assert "dataset ego version 1.0.0 already exists" in message
    assert "different input data" in message and "bump `version`" in message
    # the refused version is untouched: still day 1 only
    assert set(grown.a.manifest["split_of_recording"]) == grown.day1
    assert read_manifest("ego", "1.0.0", grown.lake)["created_ns"] == (
        grown.a.manifest["created_ns"])


# --------------------------------------------------------------------------- cache, registry


def test_cache_recomputes_only_changed_inputs(grown):
    assert len(grown.day1) == 9 and len(grown.day2) == 3
    assert (grown.a.cache_hits, grown.a.cache_misses) == (0, 9)
    # the new day's recordings are computed; day 1 comes from the cache, although the new
    # robots changed the fleet's rarity scores of day-1 frames (no feature reads them)
    scores = pl.from_arrow(read_table(grown.lake, "features/corner_cases"))
    rarity = scores.filter((pl.col("date") == DAY1) & (pl.col("robot_type") == "warehouse_amr"))
    assert rarity["score_rare_robot_type"].min() > 0
    assert (grown.b.cache_hits, grown.b.cache_misses) == (len(grown.day1), len(grown.day2))
    assert grown.b.manifest["cache"] == {"hits": 9, "misses": 3}
    assert set(grown.b.manifest["split_of_recording"]) == grown.day1 | grown.day2
    # a changed transform (IMU window size) misses for every recording
    assert (grown.c.cache_hits, grown.c.cache_misses) == (0, 12)
    assert grown.c.manifest["cache"] == {"hits": 0, "misses": 12}


def test_registry_lists_and_compares_versions(grown):
    versions = list_versions(grown.lake, "ego")
    assert versions["version"].to_list() == ["1.0.0", "1.1.0", "1.2.0"]
    for result in (grown.a, grown.b, grown.c):
        row = versions.filter(pl.col("version") == result.version).row(0, named=True)
        assert [row[f"samples_{s}"] for s in SPLITS] == [result.samples[s] for s in SPLITS]
        assert row["spec_hash"] == result.manifest["spec_hash"]
        assert row["recordings"] == len(result.manifest["split_of_recording"])
    assert list_versions(grown.lake, "no_such_dataset").height == 0

    diff = compare_versions(grown.lake, "ego", "1.0.0", "1.1.0")
    figures = {r["figure"]: r for r in diff.iter_rows(named=True)}
    for split in SPLITS:
        row = figures[f"{split}.samples"]
        assert (row["1.0.0"], row["1.1.0"]) == (grown.a.samples[split], grown.b.samples[split])
        assert row["change"] == grown.b.samples[split] - grown.a.samples[split]
    assert sum(figures[f"{s}.recordings"]["1.0.0"] for s in SPLITS) == 9
    assert sum(figures[f"{s}.recordings"]["1.1.0"] for s in SPLITS) == 12
    assert sum(figures[f"{s}.samples"]["change"] for s in SPLITS) > 0
    with pytest.raises(KeyError, match="no version 9.9.9"):
        compare_versions(grown.lake, "ego", "1.0.0", "9.9.9")


# --------------------------------------------------------------------------- quality gates


def test_quality_gates_refuse_and_write_nothing(lake, plain):
    with pytest.raises(QualityGateFailed) as err:
        build_dataset(lake, _spec("9.0.0", quality_gates={"min_samples": 1_000_000}))
    message = str(err.value)
    assert "dataset ego 9.0.0" in message
    assert f"{plain.manifest['quality']['samples']} samples" in message
    assert "quality_gates.min_samples 1000000" in message
    assert plain.manifest["quality"]["missing"] > 0
    with pytest.raises(QualityGateFailed, match="quality_gates.max_missing_rate"):
        build_dataset(lake, _spec("9.0.1", quality_gates={"max_missing_rate": 0.0}))
    for version in ("9.0.0", "9.0.1"):
        assert not lake.exists(manifest_key("ego", version))
        assert not (lake.root / "datasets" / "ego" / version).exists()
        assert list_versions(lake, "ego").filter(pl.col("version") == version).height == 0


# --------------------------------------------------------------------------- loader


def test_loader_yields_every_sample_once_in_canonical_order(lake, plain, plain_samples):
    for split in ("train", "val"):
        canonical = [s["__key__"] for s in plain_samples[split]]
        assert len(set(canonical)) == len(canonical) == plain.samples[split]
        for workers in (0, 2):
            for batch in (None, 7):
                loader = load("ego", "1.0.0", split, lake=lake, num_workers=workers,
                              batch_size=batch)
                assert _keys(loader) == canonical, (split, workers, batch)
                expected_len = len(canonical) if batch is None else math.ceil(
                    len(canonical) / batch)
                assert len(loader) == expected_len
    # a collated batch holds tensors of the documented shapes
    batch = next(iter(load("ego", "1.0.0", "train", lake=lake, batch_size=7)))
    assert tuple(batch["imu"].shape) == (7, IMU_WINDOW, 6)
    assert tuple(batch["gps"].shape) == (7, GPS_HISTORY, 3)
    assert tuple(batch["label"].shape) == (7, 2)


def test_loader_resumes_from_offset(lake, plain_samples):
    canonical = [s["__key__"] for s in plain_samples["train"]]
    consumed: list[str] = []
    for i, item in enumerate(load("ego", "1.0.0", "train", lake=lake, num_workers=2,
                                  batch_size=7)):
        consumed.extend(item["key"])
        if i == 2:
            break
    assert consumed == canonical[:21]
    rest = _keys(load("ego", "1.0.0", "train", lake=lake, num_workers=2, batch_size=7,
                      offset=len(consumed)))
    assert consumed + rest == canonical
    # an offset inside a batch, and past the end
    assert _keys(load("ego", "1.0.0", "train", lake=lake, num_workers=2, batch_size=7,
                      offset=23)) == canonical[23:]
    assert _keys(load("ego", "1.0.0", "train", lake=lake, offset=len(canonical))) == []


def test_loader_ranks_are_disjoint_and_cover_the_split(lake, plain_samples):
    canonical = [s["__key__"] for s in plain_samples["train"]]
    total = len(canonical)
    streams = []
    for rank in (0, 1):
        loader = load("ego", "1.0.0", "train", lake=lake, num_workers=2, batch_size=5,
                      rank=rank, world_size=2)
        keys = _keys(loader)
        assert keys == canonical[rank::2]
        assert len(keys) == rank_stream_length(total, rank, 2)
        assert len(loader) == math.ceil(rank_stream_length(total, rank, 2) / 5)
        streams.append(keys)
    assert not set(streams[0]) & set(streams[1])
    assert sorted(streams[0] + streams[1]) == sorted(canonical)
    # a rank resumes inside its own stream
    resumed = _keys(load("ego", "1.0.0", "train", lake=lake, num_workers=2, rank=1,
                         world_size=2, offset=10))
    assert resumed == canonical[1::2][10:]
    assert len(resumed) == rank_stream_length(total, 1, 2, offset=10)
    assert rank_stream_length(7, 0, 2) == 4 and rank_stream_length(7, 1, 2) == 3
    assert rank_stream_length(7, 1, 2, offset=5) == 0
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        load("ego", "1.0.0", "train", lake=lake, rank=2, world_size=2)


def test_loader_shuffle_changes_order_per_epoch_and_keeps_the_set(lake, plain_samples):
    canonical = [s["__key__"] for s in plain_samples["train"]]

    def epoch_keys(epoch: int, **kw) -> list[str]:
        return _keys(load("ego", "1.0.0", "train", lake=lake, shuffle=True, epoch=epoch, **kw))

    first, second = epoch_keys(0), epoch_keys(1)
    assert sorted(first) == sorted(second) == sorted(canonical)
    assert first != canonical and second != first
    assert epoch_keys(1, num_workers=2, batch_size=7) == second  # deterministic per epoch
    assert epoch_keys(1, num_workers=2, offset=40) == second[40:]


# --------------------------------------------------------------------------- LiDAR, camera

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _normalized(img: np.ndarray) -> np.ndarray:
    return ((img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def sensors(lake):
    """A version with LiDAR and camera features (the delivery robots of day 1)."""
    return build_dataset(lake, _spec("1.0.0", name="sensors", sources={
        "tables": ["cleaned/aligned_frames", "cleaned/lidar", "cleaned/camera_frames"],
        "dates": {"start": DAY1, "end": DAY1},
        "filters": {"robot_type": ["delivery"]}}, features={
        "imu_window": {"size": 10, "stride": 20},
        "lidar": {"voxel_size_m": 0.5, "range_crop_m": 30, "bev_cells": 32,
                  "augment": {"random_rotation_deg": 180}},
        "camera": {"resize": [64, 48], "augment": {"random_crop": [56, 40],
                                                   "hflip_probability": 0.5}}}))


def test_lidar_and_camera_features_and_augmentation(lake, sensors):
    built = sensors
    assert len(built.manifest["split_of_recording"]) == 4  # the delivery robots
    assert built.samples["train"] > 50 and built.samples["val"] > 10
    stats = built.manifest["splits"]["train"]["features"]
    assert stats["lidar_points"]["min"][0] > 0 and stats["camera_bytes"]["min"][0] > 0

    raw_val = _read_split(lake, built.manifest, "val")
    for sample in raw_val:
        points = sample["lidar"].astype(np.float64)
        assert sample["lidar"].dtype == np.float16 and len(points) > 0
        assert np.hypot(points[:, 0], points[:, 1]).max() <= 30.05  # range crop
        assert simplejpeg.decode_jpeg(sample["camera"], colorspace="RGB").shape == (48, 64, 3)

    # val: not augmented, whatever the epoch: BEV of the points as stored, centre crop
    val = list(load("sensors", "1.0.0", "val", lake=lake, epoch=0))
    assert [v["key"] for v in val] == [s["__key__"] for s in raw_val]
    for got, sample in zip(val, raw_val, strict=True):
        points = sample["lidar"].astype(np.float64)
        bev, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=32,
                                   range=[[-30, 30], [-30, 30]])
        assert tuple(got["lidar"].shape) == (1, 32, 32)
        assert got["lidar"].numpy()[0] == pytest.approx(bev / len(points), abs=1e-6)
        img = simplejpeg.decode_jpeg(sample["camera"], colorspace="RGB").astype(np.float64)
        assert tuple(got["camera"].shape) == (3, 40, 56)
        assert got["camera"].numpy() == pytest.approx(_normalized(img[4:44, 4:60]), abs=1e-5)
    later = list(load("sensors", "1.0.0", "val", lake=lake, epoch=3))
    assert all(np.array_equal(a["camera"], b["camera"]) and np.array_equal(a["lidar"], b["lidar"])
               for a, b in zip(val, later, strict=True))

    # train: augmented, the same for (seed, epoch), different between epochs
    raw_train = {s["__key__"]: s for s in _read_split(lake, built.manifest, "train")}
    epoch0 = list(load("sensors", "1.0.0", "train", lake=lake, epoch=0))
    again = list(load("sensors", "1.0.0", "train", lake=lake, epoch=0, num_workers=2))
    epoch1 = list(load("sensors", "1.0.0", "train", lake=lake, epoch=1))
    assert len(epoch0) == len(raw_train) == built.samples["train"]
    for a, b in zip(epoch0, again, strict=True):
        assert a["key"] == b["key"]
        assert np.array_equal(a["lidar"], b["lidar"]) and np.array_equal(a["camera"],
                                                                         b["camera"])
    lidar_changed = sum(not np.array_equal(a["lidar"], b["lidar"])
                        for a, b in zip(epoch0, epoch1, strict=True))
    camera_changed = sum(not np.array_equal(a["camera"], b["camera"])
                         for a, b in zip(epoch0, epoch1, strict=True))
    assert lidar_changed > 0.9 * len(epoch0) and camera_changed > 0.5 * len(epoch0)

    flips = 0
    for got in epoch0:
        assert tuple(got["lidar"].shape) == (1, 32, 32)
        assert float(got["lidar"].sum()) == pytest.approx(1.0, abs=1e-5)  # rotation keeps all
        assert tuple(got["camera"].shape) == (3, 40, 56)
    for got in epoch0[:40]:
        # each augmented image is one 56x40 crop of the stored image, maybe mirrored
        img = simplejpeg.decode_jpeg(raw_train[got["key"]]["camera"],
                                     colorspace="RGB").astype(np.float64)
        image = got["camera"].numpy()
        matches = [flip for y in range(9) for x in range(9) for flip in (False, True)
                   if np.allclose(image, _normalized(
                       img[y:y + 40, x:x + 56][:, ::-1] if flip else img[y:y + 40, x:x + 56]),
                       atol=1e-5)]
        assert matches, got["key"]
        flips += matches[0]
    assert 5 <= flips <= 35  # hflip_probability 0.5 over 40 images


def _as_built_before_indexes(lake, name: str, version: str) -> str:
    """A copy of a version's manifest without sample indexes (as versions built before
    them are), over the same shards; returns its version."""
    manifest = json.loads(lake.read_bytes(manifest_key(name, version)))
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["index"]
    lake.write_bytes(manifest_key(name, f"{version}-tar"), json.dumps(manifest).encode())
    return f"{version}-tar"


def _same_items(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def test_sample_index_gives_what_the_tar_headers_give(lake, plain, sensors):
    """Shards carry a sample index; reading through it yields exactly the samples and
    batches that parsing the tars does (augmented sensors included), and versions built
    before indexes still load."""
    for name in ("ego", "sensors"):
        manifest = json.loads(lake.read_bytes(manifest_key(name, "1.0.0")))
        shard = manifest["splits"]["train"]["shards"][0]
        index = pq.read_table(lake.root / shard["index"])
        assert index.num_rows == shard["samples"]
        assert index.column("key").to_pylist()[:3] == [
            s["__key__"] for s in itertools.islice(iter_shard(lake.root / shard["key"]), 3)]
        tar = _as_built_before_indexes(lake, name, "1.0.0")
        for kw in ({"epoch": 1}, {"batch_size": 7, "num_workers": 2, "offset": 3},
                   {"batch_size": 5, "rank": 1, "world_size": 2, "shuffle": True}):
            _same_items(list(load(name, "1.0.0", "train", lake=lake, **kw)),
                        list(load(name, tar, "train", lake=lake, **kw)))


# --------------------------------------------------------------------------- GPS ENU


def test_geodetic_to_enu():
    lat0, lon0, alt0 = REGIONS["eu-west"]
    origin = (lat0, lon0, alt0)
    points = geodetic_to_enu(np.array([lat0 + 0.001, lat0, lat0, lat0]),
                             np.array([lon0, lon0 + 0.001, lon0, lon0]),
                             np.array([alt0, alt0, alt0, alt0 + 10.0]), origin)
    # WGS84 radii of curvature at the origin (meridian M, prime vertical N)
    a, e2, phi = 6378137.0, 6.69437999014e-3, math.radians(lat0)
    m = a * (1 - e2) / (1 - e2 * math.sin(phi) ** 2) ** 1.5
    n = a / math.sqrt(1 - e2 * math.sin(phi) ** 2)
    step = math.radians(0.001)
    north, east, up = points[0], points[1], points[3]
    assert north[1] == pytest.approx(111.0, abs=0.5)
    assert north[1] == pytest.approx(m * step, abs=0.01)
    assert abs(north[0]) < 1e-6 and abs(north[2]) < 0.01  # ~1 mm of earth curvature
    assert east[0] == pytest.approx(111.32 * math.cos(phi), abs=0.5)
    assert east[0] == pytest.approx(n * math.cos(phi) * step, abs=0.01)
    assert abs(east[1]) < 0.01 and abs(east[2]) < 0.01
    assert points[2] == pytest.approx([0, 0, 0], abs=1e-6)
    assert up == pytest.approx([0, 0, 10.0], abs=1e-6)
