"""Privacy of dataset specs (issue 13): the `privacy: masked|approved` rule, GPS coarsened to
a 100 m grid before features and the feature cache, approvals and the build's `read`
entries in ops/audit, and an erase with --to DATE of a recording that crosses midnight.

One module-scoped lake: two simulated delivery robots, 20 s each, one at noon and one
from 23:59:50 to 00:00:10 (rows on two days), cleaned, and two dataset versions built over
both days (the same features, one `approved`, one `masked`).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from robolake import cleaned, raw
from robolake.datasets.build import CACHE_PREFIX, build_dataset, geodetic_to_enu
from robolake.datasets.shards import iter_shard
from robolake.datasets.spec import SpecError, load_spec, parse_spec
from robolake.governance import catalog, privacy
from robolake.simulate import RobotIdentity, simulate_recording
from robolake.storage import open_store
from robolake.tables import read_table

DAY, NEXT = "2026-11-20", "2026-11-21"
GPS = ["cleaned/aligned_frames.gps_alt", "cleaned/aligned_frames.gps_lat",
       "cleaned/aligned_frames.gps_lon"]
APPROVAL = {"by": "dpo@robolake.example", "when": "2026-12-01", "reason": "DPIA-42 ego motion"}


def _ns(when: str) -> int:
    return int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()) * 10**9


MIDNIGHT = _ns(f"{NEXT}T00:00:00")


def _spec_data(name: str, mode: str | None = None, **changes) -> dict:
    data = {"name": name, "version": "1.0.0",
            "sources": {"dates": {"start": DAY, "end": NEXT}},
            "features": {"imu_window": {"size": 10, "stride": 5},
                         "gps_trajectory": {"history": 5}},
            "labels": {"kind": "scenario"},
            "output": {"shard_size_mb": 1, "splits": {"train": 0.5, "val": 0.5, "test": 0.0}},
            "quality_gates": {"min_samples": 10, "max_missing_rate": 1.0}}
    if mode:
        data["privacy"] = mode
    if mode == "approved":
        data["approval"] = APPROVAL
    data.update(changes)
    return data


# --------------------------------------------------------------------------- the rule


def test_a_spec_reading_restricted_columns_must_declare_privacy(tmp_path: Path):
    path = tmp_path / "gps.yaml"
    path.write_text(yaml.safe_dump(_spec_data("gps")))
    with pytest.raises(SpecError) as missing:
        load_spec(path)
    assert str(missing.value).startswith(
        f"{path}: privacy: required: the spec reads restricted (personal) columns "
        f"{', '.join(GPS)}; declare privacy: masked (GPS coarsened to a 100 m grid; camera "
        "images are not blurred) or privacy: approved")

    imu_only = parse_spec(_spec_data("imu", features={"imu_window": {"size": 10, "stride": 5}}))
    assert privacy.restricted_columns(imu_only) == [] and imu_only.privacy is None
    ego = _spec_data("ego", features={"imu_window": {"size": 10, "stride": 5}},
                     labels={"kind": "ego_motion"})  # speed labels read GPS positions
    with pytest.raises(SpecError, match=r"columns cleaned/aligned_frames\.gps_lat, "
                                        r"cleaned/aligned_frames\.gps_lon;"):
        parse_spec(ego, "specs/ego.yaml")

    camera = _spec_data("cam", "masked", features={"camera": {"resize": [32, 24]}})
    with pytest.raises(SpecError) as blurred:
        parse_spec(camera, "specs/cam.yaml")
    assert str(blurred.value) == (
        "specs/cam.yaml: privacy: masked cannot cover cleaned/camera_frames.payload_ref: camera "
        "images are not blurred (Robolake has no face or licence-plate detector); drop that "
        "feature or use privacy: approved")
    with pytest.raises(SpecError, match=r"^specs/a\.yaml: approval: required with privacy: "
                                        r"approved \(who approved reading cleaned/aligned"):
        parse_spec(_spec_data("a", "approved", approval=None), "specs/a.yaml")
    with pytest.raises(SpecError, match=r"specs/a\.yaml: approval\.when: "):
        parse_spec(_spec_data("a", "approved", approval={**APPROVAL, "when": "2026-13-01"}),
                   "specs/a.yaml")
    with pytest.raises(SpecError, match="approval: only for privacy: approved"):
        parse_spec(_spec_data("a", "masked", approval=APPROVAL))
    assert parse_spec(camera | {"privacy": "approved", "approval": APPROVAL}).privacy == "approved"
    masked, approved = (parse_spec(_spec_data("g", m)) for m in ("masked", "approved"))
    assert masked.spec_hash != approved.spec_hash


def test_gps_is_snapped_to_the_centre_of_its_100m_cell():
    lat, lon, alt = 53.3498, -6.2603, 20.0  # Dublin, the simulator's eu-west

    def coarse(lats, lons, alts) -> pl.DataFrame:
        frame = pl.DataFrame({"gps_lat": lats, "gps_lon": lons, "gps_alt": alts},
                             schema={c: pl.Float64 for c in privacy.GPS_COLUMNS})
        return frame.with_columns(privacy.coarsen_expressions())

    first = coarse([lat], [lon], [alt])
    c_lat, c_lon, c_alt = first.row(0)
    moved = geodetic_to_enu(np.array([c_lat]), np.array([c_lon]), np.array([c_alt]),
                            (lat, lon, alt))[0]
    assert np.hypot(moved[0], moved[1]) <= 71.0 and abs(moved[2]) <= 50.0  # half a diagonal
    assert c_alt == 50.0  # the 0..100 m altitude cell's centre
    dlat, dlon = 100 / 111_320, 100 / (111_320 * np.cos(np.radians(c_lat)))
    assert abs(c_lat / dlat - 0.5 - round(c_lat / dlat - 0.5)) < 1e-6  # a cell centre
    # 45 m around the centre in any direction: the same cell; 100 m north/east: the next
    near = coarse([c_lat + 0.45 * dlat, c_lat - 0.45 * dlat, c_lat, c_lat],
                  [c_lon, c_lon, c_lon + 0.45 * dlon, c_lon - 0.45 * dlon], [c_alt + 45] * 4)
    assert set(near.rows()) == {(c_lat, c_lon, c_alt)}
    far = coarse([c_lat + dlat, c_lat, None], [c_lon, c_lon + dlon, None], [c_alt, c_alt, None])
    enu = geodetic_to_enu(far["gps_lat"].to_numpy()[:2], far["gps_lon"].to_numpy()[:2],
                          far["gps_alt"].to_numpy()[:2], (c_lat, c_lon, c_alt))
    assert abs(enu[0, 1] - 100.0) < 0.7 and abs(enu[1, 0] - 100.0) < 0.7  # metres
    # the band to the north has its own longitude step: its centre may sit up to 50 m east/west
    assert abs(enu[0, 0]) < 50 and abs(enu[1, 1]) < 0.7
    assert far.row(2) == (None, None, None)


# --------------------------------------------------------------------------- the lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    base = tmp_path_factory.mktemp("privacy")
    landing = base / "landing"
    landing.mkdir()
    simulate_recording(landing, RobotIdentity("robot-noon", "delivery", "eu-west"),
                       _ns(f"{DAY}T12:00:00"), 20.0, seed=1)
    simulate_recording(landing, RobotIdentity("robot-night", "delivery", "eu-west"),
                       MIDNIGHT - 10 * 10**9, 20.0, seed=2)
    lake = open_store(base / "lake")
    for part in raw.ingest_landing(open_store(landing), lake):
        cleaned.clean_partition(lake, *part)
    return lake


@pytest.fixture(scope="module")
def builds(lake):
    approved = build_dataset(lake, parse_spec(_spec_data("gps_full", "approved")))
    masked = build_dataset(lake, parse_spec(_spec_data("gps_masked", "masked")))
    again = build_dataset(lake, parse_spec(_spec_data("gps_masked", "masked", version="1.1.0",
                                                      balancing={"by": "region"})))
    return approved, masked, again


def _gps_offsets(lake, result) -> np.ndarray:
    """Horizontal distance (m) of every GPS history point from its sample's own position."""
    gps = [s["gps"] for split in ("train", "val") for shard in
           result.manifest["splits"][split]["shards"] for s in iter_shard(lake.root / shard["key"])]
    return np.hypot(np.stack(gps)[..., 0], np.stack(gps)[..., 1]).ravel()


def test_masked_gps_is_coarsened_before_features_and_never_shares_the_cache(lake, builds):
    approved, masked, again = builds
    assert approved.cache_misses == masked.cache_misses == 2 and masked.cache_hits == 0
    uploads = sorted(approved.manifest["split_of_recording"])
    for u in uploads:  # one entry each: unmasked and masked
        assert len(list(lake.list(f"{CACHE_PREFIX}/{u}/"))) == 2
    full, coarse = _gps_offsets(lake, approved), _gps_offsets(lake, masked)
    assert len(full) == len(coarse) > 100
    assert (full > 0.01).mean() > 0.5 and full.max() < 20  # 0.5 s of driving, as recorded
    # masked: every point in the sample's 100 m cell (0) or a neighbouring cell's centre
    assert np.all((coarse < 1e-3) | (coarse > 90)) and (coarse < 1e-3).mean() > 0.8
    assert masked.manifest["privacy"] == {
        "mode": "masked", "restricted_columns": GPS, "gps_grid_m": 100.0,
        "not_masked": "camera images (refused with masked)"}
    assert approved.manifest["privacy"]["approval"] == APPROVAL
    assert (again.cache_hits, again.cache_misses) == (2, 0)  # masked entries are reused


def _audit(lake) -> pl.DataFrame:
    return pl.from_arrow(read_table(lake, "ops/audit")).sort("seq")


def test_a_build_records_one_read_per_table_and_its_approval(lake, builds):
    import json

    approved = builds[0]
    trail = _audit(lake)
    for result in builds:
        name = f"{result.name}@{result.version}"
        reads = trail.filter((pl.col("action") == "read")
                             & pl.col("details").str.contains(f'"dataset": "{name}"'))
        inputs = result.manifest["inputs"]
        assert dict(zip(reads["target"], reads["version"], strict=True)) == inputs
        assert reads.height == len(inputs) == 5  # aligned, corner cases, imu, reports, uploads
        details = [json.loads(d) for d in reads["details"]]
        assert len({d["build_id"] for d in details}) == 1
        assert {d["privacy"] for d in details} == {result.manifest["privacy"]["mode"]}
        assert set(reads["partition"]) == {f"date={DAY}..{NEXT}"}
    approvals = trail.filter(pl.col("action") == "approve")
    assert approvals["target"].to_list() == ["datasets/gps_full/1.0.0"]
    detail = json.loads(approvals["details"][0])
    assert {k: detail[k] for k in APPROVAL} == APPROVAL
    assert detail["restricted_columns"] == GPS
    assert detail["spec_hash"] == approved.manifest["spec_hash"]
    before = trail.filter(pl.col("action") == "read").height
    assert not build_dataset(lake, parse_spec(_spec_data("gps_full", "approved"))).created
    assert _audit(lake).filter(pl.col("action") == "read").height == before + 5


# --------------------------------------------------------------------------- erase --to


def _night_rows(lake) -> dict[str, tuple[int, int]]:
    """Per table with ts_ns: robot-night's rows (before midnight, from midnight)."""
    out = {}
    for t in catalog.TABLES.values():
        if not t.robot_column or not any(c.name == "ts_ns" for c in t.columns):
            continue
        table = read_table(lake, t.key, columns=["robot_id", "ts_ns"])
        if table is None:
            continue
        ts = pl.from_arrow(table).filter(pl.col("robot_id") == "robot-night")["ts_ns"]
        out[t.key] = (int((ts < MIDNIGHT).sum()), int((ts >= MIDNIGHT).sum()))
    return out


def _noon_rows(lake) -> int:
    return sum(pl.from_arrow(read_table(lake, k, columns=["robot_id"]))
               .filter(pl.col("robot_id") == "robot-noon").height
               for k in ("cleaned/imu", "cleaned/gps", "cleaned/aligned_frames", "raw/uploads"))


def test_erase_to_a_date_cuts_a_recording_at_midnight(lake, builds, tmp_path):
    from robolake.governance.audit import verify
    from robolake.governance.erase import erase_robot

    shutil.copytree(lake.root, tmp_path / "lake")
    lake = open_store(tmp_path / "lake")
    night = pl.from_arrow(read_table(lake, "raw/uploads")).filter(
        pl.col("robot_id") == "robot-night").row(0, named=True)
    assert night["date"] == DAY and night["end_ns"] > MIDNIGHT
    before, noon = _night_rows(lake), _noon_rows(lake)
    assert before["cleaned/imu"][0] > 0 and before["cleaned/imu"][1] > 0

    receipt = erase_robot(lake, "robot-night", "request 7", end=DAY)

    after = _night_rows(lake)
    assert after == {k: (0, late) for k, (_, late) in before.items()}  # by row time
    erased = {t["table"]: t["rows"] for t in receipt.tables}
    assert erased["cleaned/imu"] == before["cleaned/imu"][0]
    assert "raw/uploads" not in erased and "cleaned/quality_reports" not in erased
    assert receipt.uploads == []
    [partial] = receipt.partial_uploads
    assert partial["upload_id"] == night["upload_id"]
    assert partial["kept"] == [night["raw_key"], "raw/uploads row",
                               "cleaned/quality_reports row"]
    assert "outside the window" in partial["note"] and lake.exists(night["raw_key"])
    assert not list(lake.list(f"{CACHE_PREFIX}/{night['upload_id']}/"))  # derived: gone
    assert sorted(receipt.datasets_withdrawn) == ["gps_full@1.0.0", "gps_masked@1.0.0",
                                                  "gps_masked@1.1.0"]
    assert _noon_rows(lake) == noon
    # a backfill cleans both days again from the kept raw copy: the erased rows stay out
    from robolake.cleaned import clean_partition

    for day in (DAY, NEXT):
        clean_partition(lake, day, night["robot_type"], reclean=True)
    again = _night_rows(lake)
    assert {k: v for k, v in again.items() if k.startswith("cleaned/")} == {
        k: v for k, v in after.items() if k.startswith("cleaned/")}
    assert _noon_rows(lake) == noon

    late = erase_robot(lake, "robot-night", "request 7", start=NEXT, end=NEXT)
    assert late.partial_uploads[0]["upload_id"] == night["upload_id"]
    assert _night_rows(lake) == {k: (0, 0) for k in before} and lake.exists(night["raw_key"])
    whole = erase_robot(lake, "robot-night", "request 7", start=DAY, end=NEXT)
    assert (whole.uploads, whole.partial_uploads) == ([night["upload_id"]], [])
    assert not lake.exists(night["raw_key"])
    assert {t["table"] for t in whole.tables} >= {"raw/uploads", "cleaned/quality_reports"}
    assert _noon_rows(lake) == noon and verify(lake).ok
