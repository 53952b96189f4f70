"""End to end through Dagster: an SDK upload through the gateway is noticed by the
new-uploads sensor, whose run indexes it in raw/uploads with the token's identity."""

from __future__ import annotations

import dagster as dg
from gateway_fixtures import make_settings, start_gateway
from test_gateway_uploads import START_NS, UNNAMED

from robolake import raw
from robolake.sdk import DataUploader
from robolake.simulate import simulate_recording
from robolake.storage import open_store
from robolake.tables import read_table
from robolake_assets.definitions import defs
from robolake_assets.raw import raw_uploads
from robolake_resources.lake import LakeResource, LandingResource


def _resources(landing, lake) -> dict:
    return {"landing": LandingResource(uri=str(landing)), "lake": LakeResource(root=str(lake))}


def _evaluate(instance, landing, lake) -> dg.SensorResult:
    sensor = defs.get_repository_def().get_sensor_def("new_uploads_sensor")
    with dg.build_sensor_context(instance_ref=instance.get_ref(), definitions=defs,
                                 resources=_resources(landing, lake)) as ctx:
        return sensor.evaluate_tick(ctx)


def test_sdk_upload_is_picked_up_by_the_sensor_and_indexed_with_the_tokens_identity(tmp_path):
    gw = start_gateway(make_settings(tmp_path))
    try:
        truth = simulate_recording(tmp_path, UNNAMED, START_NS, 4.0, seed=9,
                                   faults=["no_identity"])
        key = gw.key("robot", robot_id="q-7", robot_type="quadruped", region="ap-south")
        up = DataUploader(gw.url, key, "q-7", "ap-south", state_dir=tmp_path / "sdk")
        status = up.upload_file(tmp_path / truth["file"], part_size=64 * 1024)
        up.close()
    finally:
        gw.stop()
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    with dg.instance_for_test() as instance:
        tick = _evaluate(instance, landing, lake)
        assert [r.partition_key for r in tick.run_requests] == ["2026-11-20|quadruped"]
        instance.add_dynamic_partitions("robot_type", ["quadruped"])
        result = dg.materialize([raw_uploads], instance=instance,
                                partition_key=tick.run_requests[0].partition_key,
                                resources=_resources(landing, lake))
        assert result.success
    rows = read_table(open_store(lake), raw.RAW_UPLOADS).to_pylist()
    assert [(r["landing_key"], r["robot_id"], r["robot_type"], r["region"],
             r["identity_source"]) for r in rows] == [
        (status["landing_key"], "q-7", "quadruped", "ap-south", "sidecar")]
    assert rows[0]["status"] in ("accepted", "flagged")
