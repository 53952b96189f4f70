"""The instance recommender: the memory estimate against PyTorch's measured peak on CPU
for every architecture in the registry, the choice of instance, the CLI, and the
training asset's GPU request sized by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robolake.costs import memory as M
from robolake.costs.prices import GIB, load_prices
from robolake.costs.recommend import format_table, recommend
from robolake.models.architectures import ARCHITECTURES, build_model, io_for_dataset
from robolake.models.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
PRICES = load_prices(ROOT / "configs/prices.yaml")
# a dataset with every feature, so each architecture finds the inputs it reads
SPEC = {"name": "probe", "labels": {"kind": "scenario"},
        "features": {"imu_window": {"size": 100}, "gps_trajectory": {"history": 10},
                     "lidar": {"bev_cells": 48}, "camera": {"resize": [96, 64]}}}


def config(arch: str, batch: int, params: dict | None = None, processes: int = 1,
           nodes: int = 1, **training) -> object:
    return parse_config({
        "name": "probe", "dataset": {"name": "probe", "version": "1.0.0"},
        "model": {"architecture": arch, "params": params or {}},
        "training": {"epochs": 1, "batch_size": batch, **training},
        "distributed": {"nproc_per_node": processes, "nnodes": nodes}})


def io(arch: str, spec: dict = SPEC):
    return io_for_dataset(ARCHITECTURES[arch], spec)


@pytest.fixture
def one_thread():
    # per-thread scratch buffers would make the measured peak depend on the machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_estimate_is_within_25_percent_of_the_measured_cpu_peak(arch, one_thread):
    # measured on 2026-12-03: camera_cnn 0.80, imu_gps_convnet 1.09, lidar_bev_cnn 1.10
    cfg = config(arch, 24)
    estimate = M.estimate_memory(cfg, io(arch))
    measured = M.measure_peak_bytes(cfg, io(arch))
    assert measured > 1_000_000  # a peak worth comparing (MBs, not bytes)
    assert 0.75 <= estimate.peak / measured <= 1.25, (arch, estimate.to_dict(), measured)
    # the parts that are arithmetic are exact
    n = sum(p.numel() for p in build_model(arch, {}, io(arch)).parameters())
    assert estimate.parameters == n and estimate.weights == 4 * n
    assert estimate.optimizer_states == 8 * n  # AdamW: two fp32 moments
    assert estimate.ddp_buckets == 0
    assert estimate.inputs == 24 * 4 * sum(
        torch.Size(s).numel() for s in io(arch).shapes.values())
    assert estimate.tensors_peak >= estimate.weights * 3 + estimate.activations


def test_precision_optimizer_and_ddp_change_the_estimate():
    arch = "camera_cnn"
    fp32 = M.estimate_memory(config(arch, 32), io(arch))
    bf16 = M.estimate_memory(config(arch, 32), io(arch), precision="bf16")
    # autocast saves half-precision activations (plus bf16 copies of the weights)
    assert 0.4 <= bf16.activations / fp32.activations <= 0.7
    assert bf16.peak < fp32.peak
    sgd = M.estimate_memory(config(arch, 32, optimizer={"name": "sgd", "momentum": 0.0}),
                            io(arch))
    assert sgd.optimizer_states == 0 and sgd.tensors_peak < fp32.tensors_peak
    ddp = M.estimate_memory(config(arch, 32, processes=2), io(arch))
    assert ddp.ddp_buckets == fp32.gradients and ddp.peak > fp32.peak
    # twice the batch: activations double, the weights do not
    big = M.estimate_memory(config(arch, 64), io(arch))
    assert big.activations == pytest.approx(2 * fp32.activations, rel=0.02)
    assert big.weights == fp32.weights
    assert M.precision_of(config(arch, 8)) == "bf16"
    assert M.precision_of(config(arch, 8, mixed_precision="off")) == "fp32"


CAMERA = {"name": "cam", "labels": {"kind": "scenario"},
          "features": {"camera": {"resize": [512, 384]}}}


@pytest.mark.parametrize("batch,chosen", [
    (32, "g4dn.2xlarge"),  # a few GiB: the cheapest GPU (T4, 16 GiB)
    (1024, "g6.2xlarge"),  # ~17 GiB: more than a T4 holds, an L4 (24 GiB) is cheapest
    (2048, "g6e.2xlarge"),  # ~33 GiB: an L40S (48 GiB)
    (4096, "p4de.24xlarge"),  # ~66 GiB: one A100-80GB of an 8-GPU node
    (8192, None),  # ~131 GiB per process: nothing holds it
])
def test_the_cheapest_type_that_fits_is_chosen(batch, chosen):
    cfg = config("camera_cnn", batch, {"channels": 32})
    rec = recommend(cfg, io("camera_cnn", CAMERA), PRICES, samples_per_epoch=100_000)
    assert (rec.chosen.instance_type if rec.chosen else None) == chosen
    assert rec.needed_bytes == int((rec.memory.peak + 0.5 * GIB) * 1.2)
    for c in rec.candidates:
        assert c.fits == (c.gpu_memory_gib * GIB >= rec.needed_bytes)
        if rec.chosen is not None and c.on_demand_per_h < rec.chosen.on_demand_per_h:
            assert not c.fits, c  # nothing cheaper fits
    # time per epoch: steps x (overhead + FLOPs at the GPU's bf16 throughput x efficiency)
    t4 = next(c for c in rec.candidates if c.instance_type == "g4dn.2xlarge")
    step_s = 0.005 + rec.memory.flops_per_step / (65e12 * 0.3)
    assert t4.epoch_hours == pytest.approx(100_000 / batch * step_s / 3600)
    assert t4.epoch_cost == pytest.approx(t4.epoch_hours * 0.752)
    p4d = next(c for c in rec.candidates if c.instance_type == "p4d.24xlarge")
    assert p4d.on_demand_per_h == pytest.approx(32.7726 / 8)  # one GPU of eight


def test_several_processes_need_a_multi_gpu_node_and_ask_for_that_many_gpus():
    from robolake_resources import pools

    cfg = config("camera_cnn", 32, processes=2)
    rec = recommend(cfg, io("camera_cnn", CAMERA), PRICES)
    assert {c.pool for c in rec.candidates} == {"gpu_high"}
    assert rec.chosen.instance_type == "p4d.24xlarge"
    assert rec.chosen.on_demand_per_h == pytest.approx(32.7726 * 2 / 8)
    kwargs = pools.gpu_sized(rec.chosen.pool, rec.processes, rec.fitting_types)
    k8s = kwargs["op_tags"]["dagster-k8s/config"]
    resources = k8s["container_config"]["resources"]
    assert resources["requests"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert kwargs["pool"] == "gpu_high"
    terms = k8s["pod_spec_config"]["affinity"]["node_affinity"][
        "required_during_scheduling_ignored_during_execution"]["node_selector_terms"]
    assert terms[0]["match_expressions"][0]["values"] == [
        "p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge"]
    with pytest.raises(ValueError, match="cannot give a step 9 GPU"):
        pools.gpu_sized("gpu_high", 9, [])
    assert "recommended: p4d.24xlarge (gpu_high)" in format_table(rec)


def test_cli_prints_a_table_and_json(capsys, tmp_path):
    from robolake_assets.cli import main

    demo = ROOT / "configs/training/imu_gps_demo.yaml"
    assert main(["recommend", str(demo), "--lake", str(tmp_path / "lake")]) == 0
    table = capsys.readouterr().out
    assert "recommended: g4dn.2xlarge (gpu_standard)" in table
    assert "unknown training samples per epoch" in table
    assert main(["recommend", str(demo), "--json", "--samples", "64000",
                 "--lake", str(tmp_path / "lake")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen"]["instance_type"] == "g4dn.2xlarge"
    assert out["memory"]["precision"] == "bf16" and out["samples_per_epoch"] == 64000
    assert out["memory"]["peak"] == out["memory"]["tensors_peak"] + out["memory"]["workspace"]
    assert out["fitting_types"] == ["g4dn.2xlarge", "g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"]
    assert out["candidates"][0]["epoch_hours"] > 0
    # a config whose dataset has no spec: a clear error naming the file and field
    bad = tmp_path / "other.yaml"
    bad.write_text(demo.read_text().replace("name: ego_motion_demo", "name: nowhere"))
    assert main(["recommend", str(bad), "--lake", str(tmp_path / "lake")]) == 2
    assert f"{bad}: dataset.name: no spec named 'nowhere'" in capsys.readouterr().err


def test_training_asset_asks_for_what_the_recommender_chose():
    import dagster as dg

    from robolake_assets.definitions import defs

    key = dg.AssetKey("model_imu_gps_demo")
    assets_def = defs.get_assets_def(key)
    k8s = assets_def.node_def.tags["dagster-k8s/config"]
    k8s = json.loads(k8s) if isinstance(k8s, str) else k8s
    assert assets_def.node_def.pool == "gpu_standard"
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    terms = k8s["pod_spec_config"]["affinity"]["node_affinity"][
        "required_during_scheduling_ignored_during_execution"]["node_selector_terms"]
    assert terms[0]["match_expressions"][0]["values"] == [
        "g4dn.2xlarge", "g6.2xlarge", "g5.2xlarge", "g6e.2xlarge"]
    assert "GPU request sized by `robolake recommend`: 1 GPU(s)" in \
        assets_def.descriptions_by_key[key]


def test_several_nodes_share_an_epoch_and_all_of_them_are_paid_for():
    """Multi-node DDP (`nnodes` pods of `nproc_per_node` GPUs): each node asks for the same
    GPUs, the epoch's samples are shared by every process, and its cost counts every node."""
    one = recommend(config("camera_cnn", 256), io("camera_cnn", CAMERA), PRICES,
                    samples_per_epoch=100_000)
    four = recommend(config("camera_cnn", 256, nodes=4), io("camera_cnn", CAMERA), PRICES,
                     samples_per_epoch=100_000)
    assert (four.processes, four.nodes, one.nodes) == (1, 4, 1)
    assert four.memory.ddp_buckets == four.memory.weights > 0 == one.memory.ddp_buckets
    assert four.chosen.instance_type == one.chosen.instance_type
    a = next(c for c in one.candidates if c.instance_type == one.chosen.instance_type)
    b = next(c for c in four.candidates if c.instance_type == one.chosen.instance_type)
    assert b.on_demand_per_h == a.on_demand_per_h  # per node
    assert b.epoch_hours == pytest.approx(a.epoch_hours / 4)
    assert b.epoch_cost == pytest.approx(b.epoch_hours * b.on_demand_per_h * 4)
    assert b.epoch_cost == pytest.approx(a.epoch_cost)  # same GPU-hours, four times the GPUs
    table = format_table(four)
    assert "batch 256 x 1 process(es) x 4 nodes" in table and "counts all 4 nodes" in table
    assert json.loads(json.dumps(four.to_dict()))["nodes"] == 4
