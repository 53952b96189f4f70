"""Training throughput: the WebDataset loader against an in-memory tensor baseline.

Writes a synthetic dataset version (robolake.models.synthetic: IMU window, GPS
trajectory and LiDAR points per sample, in the built-version format) to a
temporary lake, then runs the same training step (forward, backward, gradient
clipping, AdamW) fed two ways:

- baseline: every batch already collated in memory (no data waiting at all);
- webdataset: robolake.datasets.loader.load() streaming the shards with
  `--workers` worker processes, as training does.

For each it prints training samples/s and the share of step time spent waiting
for the next batch (target: under 10 % for the WebDataset loader). Not a test:
it never fails on time.

    .venv/bin/python benchmarks/train_step.py [--samples 4096] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from robolake.datasets.loader import load, read_manifest  # noqa: E402
from robolake.models.architectures import ARCHITECTURES, build_model, io_for_dataset  # noqa: E402
from robolake.models.synthetic import write_synthetic_dataset  # noqa: E402
from robolake.models.train import EPOCH_PREFETCH  # noqa: E402
from robolake.storage import open_store  # noqa: E402


def run_steps(model: nn.Module, inputs_of, batches, steps: int, warmup: int = 5) -> dict:
    """Train `steps` steps from an iterator of batches; time waiting vs the whole step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    wait = busy = 0.0
    samples = 0
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t_data = time.perf_counter() - t0
        loss = loss_fn(model(*inputs_of(batch)), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        t_step = time.perf_counter() - t0
        if step >= warmup:  # the first batches include starting the loader workers
            wait += t_data
            busy += t_step
            samples += batch["label"].shape[0]
    return {"samples_per_s": samples / busy, "data_wait_share": wait / busy,
            "step_ms": 1000 * busy / steps}


def forever(loader_factory, lead: int = 0):
    """Batches of epoch after epoch; like training, the next epoch's loader starts `lead`
    batches before the current epoch ends (its workers decode meanwhile)."""
    epoch = 0
    loader = loader_factory(0)
    batches = iter(loader)
    while True:
        remaining = len(loader.dataset)  # batches of this epoch
        upcoming_loader = upcoming = None
        for batch in batches:
            remaining -= 1
            if lead and remaining == lead:
                upcoming_loader = loader_factory(epoch + 1)
                upcoming = iter(upcoming_loader)
            yield batch
        epoch += 1
        if upcoming is None:
            upcoming_loader = loader_factory(epoch)
            upcoming = iter(upcoming_loader)
        loader, batches = upcoming_loader, upcoming


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4096, help="training samples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per variant")
    parser.add_argument("--workers", type=int, default=1, help="loader worker processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the training process (workers use the rest)")
    parser.add_argument("--architecture", default="imu_gps_convnet", choices=list(ARCHITECTURES))
    parser.add_argument("--hidden", type=int, default=128, help="imu_gps_convnet width")
    parser.add_argument("--window", type=int, default=100, help="IMU samples per window")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features = ("lidar",) if args.architecture == "lidar_bev_cnn" else ("imu", "gps")

    with tempfile.TemporaryDirectory(prefix="robolake-bench-") as tmp:
        lake = open_store(Path(tmp) / "lake")
        t0 = time.perf_counter()
        write_synthetic_dataset(lake, "bench", kind="scenario", features=features,
                                imu_window=args.window, bev_cells=32,
                                samples={"train": args.samples, "val": 64, "test": 64},
                                shard_size_bytes=8 << 20)
        manifest = read_manifest("bench", "1.0.0", lake)
        shards = len(manifest["splits"]["train"]["shards"])
        size = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"]) / 1e6
        print(f"dataset: {args.samples} training samples ({', '.join(features)}), {shards} "
              f"shard(s), {size:.1f} MB, written in {time.perf_counter() - t0:.1f} s")
        arch = ARCHITECTURES[args.architecture]
        io = io_for_dataset(arch, manifest["spec"])
        params = {"hidden": args.hidden} if args.architecture == "imu_gps_convnet" else {}

        def inputs_of(batch):
            return [batch[name] for name in io.inputs]

        def loader(epoch: int, workers: int):
            return load("bench", "1.0.0", "train", lake=lake, batch_size=args.batch_size,
                        num_workers=workers, epoch=epoch, shuffle=True, seed=0)

        # baseline: the same batches, collated once, cycled from memory
        in_memory = [b for b in loader(0, 0) if b["label"].shape[0] == args.batch_size]
        torch.manual_seed(0)
        model = build_model(args.architecture, params, io)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {args.architecture} ({n_params:,} parameters), batch {args.batch_size}, "
              f"{args.threads} training thread(s), {os.cpu_count()} CPU core(s)")
        cycled = in_memory * (args.steps // len(in_memory) + 2)
        baseline = run_steps(model, inputs_of, iter(cycled), args.steps)

        torch.manual_seed(0)
        model = build_model(args.architecture, params, io)
        streamed = run_steps(model, inputs_of,
                             forever(lambda e: loader(e, args.workers), lead=EPOCH_PREFETCH),
                             args.steps)

    print()
    print(f"{'feed':<34} {'samples/s':>10} {'step ms':>8} {'data wait':>10}")
    print(f"{'in-memory tensors (baseline)':<34} {baseline['samples_per_s']:>10.0f} "
          f"{baseline['step_ms']:>8.2f} {baseline['data_wait_share']:>9.1%}")
    label = f"webdataset loader, {args.workers} worker(s)"
    print(f"{label:<34} {streamed['samples_per_s']:>10.0f} {streamed['step_ms']:>8.2f} "
          f"{streamed['data_wait_share']:>9.1%}")
    ratio = streamed["samples_per_s"] / baseline["samples_per_s"]
    verdict = "met" if streamed["data_wait_share"] < 0.10 else "NOT met"
    print(f"\nwebdataset reaches {ratio:.0%} of the in-memory rate; data waiting "
          f"{streamed['data_wait_share']:.1%} of step time (target < 10 %: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
