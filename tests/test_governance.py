"""Governance (issue 13) on a small simulated lake: the catalog declares every column the
tables really have, `catalog search`, and the Dagster assets carry owners and classification.

One module-scoped lake: 3 simulated robots (2 delivery, 1 warehouse_amr), 30 s each,
ingested, cleaned, scored, two frames through the annotation queue (one labelled), one
dataset version built, one failed run recorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from robolake import annotations, cleaned, raw
from robolake.datasets.build import build_dataset
from robolake.datasets.scenarios import refresh_corner_cases
from robolake.datasets.spec import parse_spec
from robolake.governance import catalog
from robolake.governance.search import search
from robolake.maintenance import discover_tables, record_failed_run
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import open_table, read_table

DAY = "2026-11-20"
SPEC = {
    "name": "ego_gov", "version": "1.0.0", "description": "governance test set with GPS",
    "sources": {"dates": {"start": DAY, "end": DAY}},
    "features": {"imu_window": {"size": 10, "stride": 5}, "gps_trajectory": {"history": 5}},
    "labels": {"kind": "ego_motion"},
    "output": {"shard_size_mb": 1, "splits": {"train": 0.34, "val": 0.33, "test": 0.33}},
    "quality_gates": {"min_samples": 10},
    "privacy": "approved",
    "approval": {"by": "tests", "when": "2026-12-01",
                 "reason": "test data from the simulator"},
}


def build_small_lake(base: Path):
    simulate_fleet(base / "landing", robots=3, date=DAY, minutes=0.5, seed=11,
                   robot_types=("delivery", "warehouse_amr"))
    lake = open_store(base / "lake")
    for part in raw.ingest_landing(open_store(base / "landing"), lake):
        cleaned.clean_partition(lake, *part)
    refresh_corner_cases(lake)
    build_dataset(lake, parse_spec(SPEC))
    _annotate(lake, base / "export.json")
    record_failed_run(lake, {"run_id": "run-1", "job_name": "ingest_cleaned",
                             "status": "FAILURE", "failed_ns": 1, "reason": "boom",
                             "failed_steps": [{"step_key": "cleaned_layer", "error": "x"}],
                             "tags": {"a": "b"}})
    return lake


def _annotate(lake, export: Path) -> None:
    """Two frames through the annotation queue, one labelled back (annotations tables)."""
    queued = annotations.queue_corner_cases(lake, threshold=0.0, limit=2)
    result = [{"from_name": "scenario", "to_name": "camera", "type": "choices",
               "value": {"choices": ["hard_braking"]}}]
    export.write_text(json.dumps([{"id": 1, "data": queued.tasks[0]["data"], "annotations": [
        {"id": 1, "completed_by": 1, "result": result, "created_at": "2026-12-01T00:00:00Z"}]}]))
    assert len(annotations.import_annotations(lake, export).imported) == 1


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return build_small_lake(tmp_path_factory.mktemp("gov"))


ERASE_TABLES = {"datasets/withdrawn", "ops/erasures"}  # written by the erase test below


def assert_catalog_matches(lake, expected: set[str]) -> None:
    found = set(discover_tables(lake))
    undeclared = found - set(catalog.TABLES)
    assert not undeclared, f"tables missing from robolake/governance/catalog.py: {undeclared}"
    assert expected <= found, f"not written: {expected - found}"
    for key in sorted(found):
        actual = {f.name for f in open_table(lake, key).schema().fields}
        declared = {c.name for c in catalog.TABLES[key].columns}
        assert actual == declared, (key, "undeclared:", actual - declared,
                                    "declared but absent:", declared - actual)


def test_catalog_declares_exactly_the_columns_every_table_has(lake):
    assert_catalog_matches(lake, set(catalog.TABLES) - ERASE_TABLES)


def test_personal_data_is_restricted_and_levels_roll_up():
    assert catalog.classification_of("cleaned/gps", "lat") == "restricted"
    assert catalog.classification_of("cleaned/camera_frames", "payload_ref") == "restricted"
    assert catalog.classification_of("cleaned/aligned_frames", "gps_lon") == "restricted"
    assert catalog.classification_of("cleaned/imu", "ax") == "internal"
    assert catalog.classification_of("cleaned/gps") == "restricted"  # its most sensitive
    assert catalog.classification_of("cleaned/imu") == "confidential"  # robot_id
    assert catalog.classification_of("datasets/registry", "name") == "public"
    assert catalog.dataset_classification(["imu_window"]) == "internal"
    assert catalog.dataset_classification(["imu_window", "gps_trajectory"]) == "restricted"
    assert catalog.FILE_AREAS["raw/files"].classification == "restricted"
    for t in catalog.TABLES.values():  # every reference in lineage names a declared column
        for c in t.columns:
            for ref in c.derived_from:
                assert catalog.source_level(ref) in catalog.LEVELS, (t.key, c.name, ref)
    with pytest.raises(KeyError, match="not in the catalog"):
        catalog.table("cleaned/nope")


def test_search_finds_tables_columns_and_dataset_versions(lake):
    hits = {(h.kind, h.name): h for h in search(lake, "latitude")}
    assert set(hits) == {("column", "cleaned/gps.lat"),
                         ("column", "cleaned/aligned_frames.gps_lat"),
                         ("column", "features/corner_cases.gps_lat")}
    aligned = hits[("column", "cleaned/aligned_frames.gps_lat")]
    assert aligned.classification == "restricted"
    assert aligned.lineage == "cleaned/gps.lat, cleaned/gps.ts_ns"
    by_tag = {h.name for h in search(lake, "restricted") if h.kind == "dataset_version"}
    assert by_tag == {"ego_gov@1.0.0"}
    ds = [h for h in search(lake, "ego_gov") if h.kind == "dataset_version"]
    assert len(ds) == 1 and ds[0].classification == "restricted"
    assert "cleaned/aligned_frames@v" in ds[0].lineage
    tables = {h.name for h in search(lake, "audit") if h.kind == "table"}
    assert tables == {"ops/audit"}
    with pytest.raises(ValueError, match="non-empty"):
        search(lake, "  ")


def test_search_finds_model_versions_with_their_dataset_level(lake, monkeypatch):
    from robolake.models import tracking

    client = tracking.configure(lake)
    client.create_registered_model("ego_mlp")
    mv = client.create_model_version("ego_mlp", source=str(lake.root / "mlflow" / "m"),
                                     tags={"dataset.name": "ego_gov",
                                           "dataset.version": "1.0.0"},
                                     description="mlp on ego_gov")
    hits = [h for h in search(lake, "ego_mlp") if h.kind == "model_version"]
    assert [(h.name, h.classification, h.lineage) for h in hits] == [
        (f"ego_mlp/{mv.version}", "restricted", "trained on ego_gov@1.0.0")]


def test_cli_catalog_search(lake, capsys):
    from robolake_assets.cli import main

    assert main(["catalog", "search", "camera image", "--lake", str(lake.root)]) == 0
    out = capsys.readouterr().out
    assert "cleaned/camera_frames.payload_ref" in out and "restricted" in out
    assert "raw/files/" in out and "2 match(es)" in out


def test_dagster_assets_show_owners_classification_and_column_docs():
    from robolake_assets import cleaned as cleaned_assets
    from robolake_assets import raw as raw_assets

    spec = {s.key.to_user_string(): s for s in cleaned_assets.cleaned_layer.specs}
    gps = spec["cleaned_gps"]
    assert gps.owners == ["team:perception"]
    assert gps.tags["classification"] == "restricted"
    columns = {c.name: c for c in gps.metadata["dagster/column_schema"].columns}
    assert columns["lat"].tags == {"classification": "restricted"}
    assert columns["lat"].type == "double"
    assert columns["lat"].description.startswith("[restricted] Latitude")
    raw_spec = next(iter(raw_assets.raw_uploads.specs))
    assert raw_spec.owners == ["team:data-platform"]
    assert raw_spec.tags["classification"] == "confidential"


def test_column_lineage_from_the_catalog():
    from robolake_assets.helpers import (
        column_lineage,
        dataset_column_lineage,
        model_column_lineage,
    )

    def deps(lineage, column):  # Dagster keeps a column's deps sorted
        return sorted((d.asset_key.to_user_string(), d.column_name)
                      for d in lineage["dagster/column_lineage"].deps_by_column[column])

    aligned = column_lineage("cleaned/aligned_frames")
    assert deps(aligned, "imu_ax") == [("cleaned_imu", "ax"), ("cleaned_imu", "ts_ns")]
    assert deps(aligned, "lidar_points") == [("cleaned_lidar", "points_kept")]
    scores = column_lineage("features/corner_cases")
    assert deps(scores, "score_gps_loss") == [("cleaned_aligned_frames", "gps_lat")]
    assert column_lineage("cleaned/imu") == {}  # read from recordings, not from a table
    dataset = dataset_column_lineage(["imu_window", "gps_trajectory", "label_scenario"])
    assert set(dataset["dagster/column_lineage"].deps_by_column) == {"imu", "gps", "label"}
    assert deps(dataset, "gps") == [("cleaned_aligned_frames", f"gps_{k}")
                                    for k in ("alt", "lat", "lon")]
    assert deps(dataset, "label") == [("corner_case_scores", "scenario")]
    model = model_column_lineage("ego_gov", ["imu", "gps"])
    assert deps(model, "gps") == [("datasets/ego_gov", "gps")]
    assert set(model["dagster/column_lineage"].deps_by_column) == {"imu", "gps", "label"}


# --------------------------------------------------------------------------- GDPR erase


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and any(n in p.read_bytes() for n in needles))


def _rows_per_robot(lake) -> dict[tuple[str, str], int]:
    counts = {}
    for t in catalog.TABLES.values():
        if t.robot_column and open_table(lake, t.key) is not None:
            frame = pl.from_arrow(read_table(lake, t.key, columns=["robot_id"]))
            for robot, n in frame.group_by("robot_id").len().iter_rows():
                counts[(t.key, robot)] = n
    return counts


def test_erase_and_purge_leave_no_byte_of_the_robot_and_keep_the_others(lake, tmp_path):
    from robolake.governance.audit import verify
    from robolake.governance.erase import erase_robot, subject_hash, withdrawn_versions
    from robolake.models import tracking

    shutil.copytree(lake.root, tmp_path / "lake")
    shutil.copytree(lake.root.parent / "landing", tmp_path / "landing")
    lake, landing = open_store(tmp_path / "lake"), open_store(tmp_path / "landing")
    uploads = pl.from_arrow(read_table(lake, "raw/uploads")).sort("robot_id")
    victim = uploads.row(0, named=True)
    robot = victim["robot_id"]
    raw_bytes = lake.read_bytes(victim["raw_key"])
    needles = [robot.encode(), raw_bytes[len(raw_bytes) // 2:len(raw_bytes) // 2 + 64]]
    assert _files_holding(lake.root, needles) and _files_holding(landing.root, needles)
    client = tracking.configure(lake)
    client.create_registered_model("ego_erase")
    client.create_model_version("ego_erase", source=str(lake.root / "m"),
                                tags={"dataset.name": "ego_gov", "dataset.version": "1.0.0"})
    before = _rows_per_robot(lake)
    assert before[("cleaned/gps", robot)] > 0

    receipt = erase_robot(lake, robot, "GDPR art. 17 request #7", landing=landing,
                          purge_now=True)

    assert receipt.uploads == [victim["upload_id"]]
    erased = {t["table"]: t["rows"] for t in receipt.tables}
    for key in ("cleaned/gps", "cleaned/imu", "cleaned/aligned_frames", "raw/uploads"):
        assert erased[key] == before[(key, robot)]
    assert erased["raw/landing_index"] == 1
    assert victim["raw_key"] in receipt.files_deleted
    assert f"landing:sha256:{subject_hash(victim['landing_key'])}" in receipt.files_deleted
    assert any(f.startswith(f"features/cache/{victim['upload_id']}/")
               for f in receipt.files_deleted)
    assert receipt.datasets_withdrawn == ["ego_gov@1.0.0"]
    assert withdrawn_versions(lake) == {"ego_gov@1.0.0": "GDPR art. 17 request #7"}
    [found] = [h for h in search(lake, "withdrawn") if h.kind == "dataset_version"]
    assert found.description.startswith("[withdrawn: GDPR art. 17 request #7]")
    assert "ego_erase/1" in receipt.models_tagged  # (ego_mlp/1 too, if registered above)
    tags = client.get_model_version("ego_erase", "1").tags
    assert tags["robolake.dataset_withdrawn"] == "ego_gov@1.0.0: GDPR art. 17 request #7"
    assert all(p["files_vacuumed"] for p in receipt.purged if p["table"].startswith("cleaned"))
    # nothing of the robot anywhere: not its id (rows, statistics in the log), not its bytes
    assert _files_holding(lake.root, needles) == []
    # (the simulator's ground_truth.json lies beside the uploads: the test's, not an upload)
    assert _files_holding(landing.root, needles) == ["ground_truth.json"]
    after = _rows_per_robot(lake)
    assert after == {k: n for k, n in before.items() if k[1] != robot}
    assert lake.exists(uploads.row(1, named=True)["raw_key"])
    assert verify(lake).ok
    kept = pl.from_arrow(read_table(lake, "ops/erasures")).row(0, named=True)
    assert kept["subject_sha256"] == subject_hash(robot)
    trail = pl.from_arrow(read_table(lake, "ops/audit")).sort("seq")
    assert trail["action"].to_list()[-3:] == ["write", "erase", "purge"]  # receipt, erase, purge
    assert trail["target"][-1] == f"robot:{subject_hash(robot)}"
    assert_catalog_matches(lake, set(catalog.TABLES))
    again = erase_robot(lake, robot, "repeat", landing=landing)
    assert (again.uploads, again.tables, again.files_deleted) == ([], [], [])


def test_erase_refuses_bad_requests(tmp_path):
    from robolake.governance.erase import erase_robot

    lake = open_store(tmp_path)
    for kwargs, words in [({"reason": " "}, "--reason"),
                          ({"reason": "x", "start": "2026-13-01"}, "month"),
                          ({"reason": "x", "start": "20261101"}, "not a date"),
                          ({"reason": "x", "start": "2026-11-02", "end": "2026-11-01"},
                           "after")]:
        with pytest.raises(ValueError, match=words):
            erase_robot(lake, "r-1", **kwargs)


def test_gateway_erase_is_for_admins_and_audited_as_the_key(tmp_path):
    from gateway_fixtures import make_settings, start_gateway

    from robolake.governance.audit import verify

    gw = start_gateway(make_settings(tmp_path))
    try:
        body = {"robot_id": "r-9", "reason": "request 12", "from": "2026-11-01"}
        with gw.client(gw.token(gw.key("engineer"))) as c:
            assert c.post("/api/v1/privacy/erase", json=body).status_code == 403
        admin = gw.key("admin")
        with gw.client(gw.token(admin)) as c:
            r = c.post("/api/v1/privacy/erase", json=body)
            assert r.status_code == 200, r.text
            assert (r.json()["date_from"], r.json()["uploads"]) == ("2026-11-01", [])
            bad = c.post("/api/v1/privacy/erase", json={**body, "from": "2026-11-31"})
            assert bad.status_code == 422 and "from" in bad.text
    finally:
        gw.stop()
    lake = open_store(gw.settings.lake)
    assert verify(lake).ok
    rows = pl.from_arrow(read_table(lake, "ops/audit")).sort("seq").to_dicts()
    [erase] = [r for r in rows if r["action"] == "erase"]
    assert (erase["actor"], erase["role"]) == (f"key:{admin.split('_')[1]}", "admin")
