"""The GPU paths, run once on a CUDA machine: what CPU-only CI cannot exercise.

1. The memory estimate (robolake.costs.memory) against PyTorch's measured CUDA peak
   for every architecture, at fp32 and bf16, at the tests' batch and a large one, and
   whether the steps still run with the allocator capped at the recommender's allowance
   (the estimate plus its headroom, the CUDA context aside).
2. Training on a synthetic dataset (robolake.models.synthetic) on CUDA with the
   config's mixed precision (`auto`: bf16; and `fp16`, which turns the GradScaler on),
   with the per-step GPU metrics (memory, utilisation through NVML).
3. A run stopped mid-way and resumed from its lake checkpoint (CUDA RNG and scaler
   state restored) against the same run uninterrupted: same steps, and whether the
   weights are bit-identical (on CPU they are; on CUDA cuDNN may choose other kernels).
4. Evaluation on CUDA (robolake.models.evaluate.evaluate_model): task metrics, batched
   and single-sample speed, and the ONNX export checked against PyTorch.

It prints one JSON document and writes it to `--out` when given. Not a test: nothing in
it fails on time. Without CUDA it says so and exits 2 (`--cpu` runs it on the CPU, to
check the script itself). A GPU machine without the ingestion stack (rosbags, mcap,
deltalake) can take a lake written elsewhere: `--write-lake DIR` here, `--lake DIR` there.

    .venv/bin/python benchmarks/gpu_paths.py [--out gpu_paths.json] [--lake DIR] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from robolake.costs import memory as M  # noqa: E402
from robolake.costs.recommend import HEADROOM  # noqa: E402
from robolake.models import metrics  # noqa: E402
from robolake.models.architectures import ARCHITECTURES, io_for_dataset  # noqa: E402
from robolake.models.config import parse_config  # noqa: E402
from robolake.models.evaluate import evaluate_model  # noqa: E402
from robolake.models.export import export_onnx  # noqa: E402
from robolake.models.synthetic import small_config, write_synthetic_dataset  # noqa: E402
from robolake.models.train import train  # noqa: E402
from robolake.storage import open_store  # noqa: E402

# every feature, so each architecture finds its inputs (as tests/test_costs_recommend.py)
SPEC = {"name": "probe", "labels": {"kind": "scenario"},
        "features": {"imu_window": {"size": 100}, "gps_trajectory": {"history": 10},
                     "lidar": {"bev_cells": 48}, "camera": {"resize": [96, 64]}}}


def _probe(arch: str, batch: int):
    return parse_config({"name": "probe", "dataset": {"name": "probe", "version": "1.0.0"},
                         "model": {"architecture": arch, "params": {}},
                         "training": {"epochs": 1, "batch_size": batch}}, "<gpu_paths>")


def warm_up() -> int:
    """Bytes that the process's first CUDA steps leave allocated for good (cuBLAS's and
    cuDNN's per-handle workspaces): like the CUDA context, paid once per process and left
    to the recommender's context allowance, so measured before the estimates are checked."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for arch in sorted(ARCHITECTURES):
        for precision in ("fp32", "bf16"):
            M.measure_cuda_peak_bytes(_probe(arch, 2), io_for_dataset(ARCHITECTURES[arch],
                                                                      SPEC), precision)
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() - before


def memory_check(cuda: bool) -> list[dict]:
    rows = []
    for arch in sorted(ARCHITECTURES):
        io = io_for_dataset(ARCHITECTURES[arch], SPEC)
        for precision in ("fp32", "bf16"):
            for batch in (24, 512):
                cfg = _probe(arch, batch)
                estimate = M.estimate_memory(cfg, io, precision=precision)
                row = {"architecture": arch, "precision": precision, "batch": batch,
                       "estimate_mb": round(estimate.peak / 1e6, 2)}
                if cuda:
                    measured = M.measure_cuda_peak_bytes(cfg, io, precision)
                    row["fits_allowance"] = _fits(cfg, io, precision, estimate.peak)
                elif precision == "fp32":
                    measured = M.measure_peak_bytes(cfg, io)
                else:
                    continue
                rows.append({**row, "measured_mb": round(measured / 1e6, 2),
                             "ratio": round(estimate.peak / measured, 3)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _fits(cfg, io, precision: str, estimate: int) -> bool:
    """Whether two training steps run with the allocator capped at what the recommender
    allows a process beside the CUDA context (the estimate plus its headroom): cuDNN picks
    an algorithm with a smaller workspace when a larger one does not fit."""
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    allowance = torch.cuda.memory_allocated() + estimate * (1 + HEADROOM)
    torch.cuda.set_per_process_memory_fraction(min(1.0, allowance / total))
    try:
        M.measure_cuda_peak_bytes(cfg, io, precision)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


class _Recorder(metrics.NullTracker):
    """Keeps the per-step metrics a run logs (the run has tracking off: no MLflow here)."""

    logged: list[dict] = []

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.logged.append({"step": step, **values})


def training_check(lake_dir: Path, precision: str) -> dict:
    """The IMU/GPS network (the demo's) trained whole, and stopped and resumed."""
    lake = open_store(lake_dir)
    config = small_config(f"gpu_{precision}", training={
        "mixed_precision": precision, "epochs": 6, "batch_size": 64, "log_every_steps": 5})
    _Recorder.logged = []
    started = time.perf_counter()
    whole = train(config, lake, run_key="whole", track=False, log=lambda m: None)
    seconds = time.perf_counter() - started
    logged = list(_Recorder.logged)
    stopped = train(config, lake, run_key="resumed", track=False, stop_after_steps=67,
                    log=lambda m: None)
    resumed = train(config, lake, run_key="resumed", track=False, log=lambda m: None)
    last = whole.history[-1]
    return {
        "precision": precision, "steps": whole.global_step, "seconds": round(seconds, 2),
        "throughput": {k: round(v, 4) for k, v in whole.throughput.items()},
        "last_epoch": {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()},
        "last_step_metrics": [m for m in logged if "train_loss" in m][-1],
        "gpu_metrics_logged": sorted({k for m in logged for k in m if k.startswith("gpu_")}),
        "resume": {"stopped_at": stopped.global_step, "resumed_from": resumed.resumed_from,
                   "steps": resumed.global_step,
                   "same_weights": resumed.weights_sha256 == whole.weights_sha256},
        "model": whole.model, "config": config,
    }


def write_lake(lake_dir: Path) -> None:
    write_synthetic_dataset(open_store(lake_dir), samples={"train": 1920, "val": 256,
                                                            "test": 512})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--lake", help="a lake that already holds the synthetic dataset "
                                       "(`--write-lake DIR` writes one; the GPU machine "
                                       "then needs no ingestion dependencies)")
    parser.add_argument("--write-lake", help="write the synthetic dataset here and stop")
    parser.add_argument("--cpu", action="store_true", help="run without CUDA (checks the "
                                                            "script, not the GPU paths)")
    args = parser.parse_args()
    if args.write_lake:
        write_lake(Path(args.write_lake))
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print("no CUDA device: nothing to check (--cpu runs the script on the CPU)")
        return 2
    report: dict = {"torch": torch.__version__, "cuda": torch.version.cuda,
                    "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "bf16_supported": cuda and torch.cuda.is_bf16_supported()}
    print(json.dumps(report), flush=True)
    if cuda:
        report["persistent_workspaces_mb"] = round(warm_up() / 1e6, 2)
        print(json.dumps({"persistent_workspaces_mb": report["persistent_workspaces_mb"]}))
    report["memory"] = memory_check(cuda)
    with tempfile.TemporaryDirectory() as tmp:
        lake_dir = Path(tmp) / "lake"
        if args.lake:
            shutil.copytree(args.lake, lake_dir)
        else:
            write_lake(lake_dir)
        null = metrics.NullTracker
        metrics.NullTracker = _Recorder  # what train() uses when tracking is off
        try:
            runs = [training_check(lake_dir, p) for p in ("auto", "fp16")]
        finally:
            metrics.NullTracker = null
        report["training"] = []
        for run in runs:
            model, config = run.pop("model"), run.pop("config")
            onnx_path = export_onnx(model, Path(tmp) / f"{config.name}.onnx")
            evaluation = evaluate_model(model, open_store(lake_dir), config,
                                        onnx_path=onnx_path)
            run["evaluation"] = evaluation.to_dict()
            report["training"].append(run)
            print(json.dumps(run, default=str), flush=True)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
