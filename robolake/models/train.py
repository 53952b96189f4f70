"""The training loop: seeded, checkpointed to the lake, resumable, DDP under torchrun.

Determinism. On CPU a run is a function of the config (seed included), the
dataset version and the world size: weights are initialised after seeding,
batches come from the loader in a fixed order (robolake.datasets.loader),
deterministic algorithms are on, and every RNG draw that is not part of
training (creating a DataLoader iterator draws a worker seed) is fenced off.

Checkpoints. Every `checkpoint.every_steps` steps or `every_minutes` minutes,
and at each epoch's end, rank 0 writes model, optimiser, scheduler, AMP scaler,
RNG states (torch, CUDA, numpy, random), the loader position (epoch, samples
consumed this epoch) and the early-stopping state to
`models/<name>/checkpoints/<run key>/step-XXXXXXXX.pt` in the lake, then the
pointer `latest.json` (last, so a half-written checkpoint is never picked), and
keeps the newest `keep`. A restarted run with the same run key resumes from the
pointer and reaches bit-identical weights to an uninterrupted run. The default
run key is the config hash plus the world size; a finished run's checkpoints
are cleared and it trains again from step 0 when asked to.

Distributed. Launched by torchrun (RANK/WORLD_SIZE set), each process joins the
process group (gloo on CPU, nccl on CUDA), wraps the model in
DistributedDataParallel and reads its own interleaved share of the split; every
rank runs the same number of steps per epoch (the smallest rank's share), so
collectives stay matched. All ranks are seeded alike, so the RNG state rank 0
checkpoints is every rank's.

Metrics per logged step: loss (rank 0's batches), learning rate, samples/s
(all ranks), the share of step time spent waiting for data, and on CUDA GPU
utilisation and memory. Per epoch: the training loss over every rank's samples
(after a mid-epoch resume under DDP, rank 0's share before the checkpoint
stands for every rank's) and the validation metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from robolake.datasets.loader import load, rank_stream_length, read_manifest
from robolake.models import metrics as M
from robolake.models.architectures import (
    ARCHITECTURES,
    ModelIO,
    build_model,
    io_for_dataset,
)
from robolake.models.config import TrainingConfig
from robolake.storage import LocalStore, Store

Log = Callable[[str], None]
EPOCH_PREFETCH = 4  # batches before an epoch's end at which the next epoch's loader starts


# --------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by it)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _init_process_group(env: DistEnv, backend: str) -> bool:
    """Join the process group if needed; True when this call created it."""
    if not env.distributed or dist.is_initialized():
        return False
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend)
    return True


# --------------------------------------------------------------------------- checkpoints

def default_run_key(config: TrainingConfig, world_size: int = 1) -> str:
    return f"{config.config_hash[:12]}-w{world_size}"


def checkpoint_prefix(model_name: str, run_key: str) -> str:
    return f"models/{model_name}/checkpoints/{run_key}"


def _delete(store: Store, key: str) -> None:
    if isinstance(store, LocalStore):
        (store.root / key).unlink(missing_ok=True)
    elif hasattr(store, "client") and hasattr(store, "bucket"):  # S3Store
        store.client.delete_object(Bucket=store.bucket, Key=store._key(key))
    else:
        raise TypeError(f"cannot delete {key} from {type(store).__name__}")


class CheckpointStore:
    """Checkpoints of one run key in the lake, with the `latest.json` pointer."""

    def __init__(self, lake: Store, prefix: str):
        self.lake, self.prefix = lake, prefix
        self.pointer = f"{prefix}/latest.json"

    def step_key(self, step: int) -> str:
        return f"{self.prefix}/step-{step:08d}.pt"

    def latest_pointer(self) -> dict | None:
        if not self.lake.exists(self.pointer):
            return None
        return json.loads(self.lake.read_bytes(self.pointer))

    def load(self, pointer: dict) -> dict:
        # our own files: they hold RNG states (tuples, numpy arrays), not only tensors
        return torch.load(io.BytesIO(self.lake.read_bytes(pointer["key"])), map_location="cpu",
                          weights_only=False)

    def save(self, state: dict, step: int, finished: bool, keep: int) -> str:
        key = self.step_key(step)
        with tempfile.TemporaryDirectory(prefix="robolake-ckpt-") as tmp:
            path = Path(tmp) / "checkpoint.pt"
            torch.save(state, path)
            self.lake.put_file(path, key)
        pointer = {"key": key, "step": step, "epoch": state["position"]["epoch"],
                   "samples_in_epoch": state["position"]["samples_in_epoch"],
                   "finished": finished, "written_at": time.time()}
        self.lake.write_bytes(self.pointer, json.dumps(pointer, indent=2).encode())
        self.prune(keep, current=key)
        return key

    def keys(self) -> list[str]:
        return sorted(o.key for o in self.lake.list(self.prefix)
                      if o.key.rsplit("/", 1)[-1].startswith("step-")
                      and o.key.endswith(".pt"))

    def prune(self, keep: int, current: str) -> None:
        old = [k for k in self.keys() if k != current]
        for key in old[: max(0, len(old) - (keep - 1))]:
            _delete(self.lake, key)

    def clear(self) -> None:
        for key in self.keys():
            _delete(self.lake, key)
        if self.lake.exists(self.pointer):
            _delete(self.lake, self.pointer)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def _rng_fence() -> Iterator[None]:
    """Run code that draws from torch's global RNG without it counting (DataLoader
    iterators draw a worker base seed when created, which a resumed run would not)."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


def weights_sha256(model: nn.Module) -> str:
    """A fingerprint of the weights (names, dtypes, shapes and bytes of the state dict)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16
                      else t.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- optimisation

def make_optimizer(config: TrainingConfig, params) -> torch.optim.Optimizer:
    opt = config.training.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum,
                               weight_decay=opt.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=opt.lr, weight_decay=opt.weight_decay)


def lr_factor(config: TrainingConfig, total_steps: int) -> Callable[[int], float]:
    sched = config.training.lr_schedule

    def factor(step: int) -> float:
        if step < sched.warmup_steps:
            return (step + 1) / sched.warmup_steps
        if sched.name == "constant":
            return 1.0
        if sched.name == "step":
            return sched.gamma ** ((step - sched.warmup_steps) // sched.step_size)
        span = max(1, total_steps - sched.warmup_steps)
        progress = min(1.0, (step - sched.warmup_steps) / span)
        return sched.min_factor + (1 - sched.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss(reduction="sum") if task == "scenario" else \
        nn.MSELoss(reduction="sum")


def _amp_dtype(config: TrainingConfig, device: torch.device) -> torch.dtype | None:
    mode = config.training.mixed_precision
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def _gpu_metrics(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    out = {"gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9}
    with contextlib.suppress(Exception):  # NVML (nvidia-ml-py) missing or no driver access
        out["gpu_utilization"] = float(torch.cuda.utilization(device))
    return out


# --------------------------------------------------------------------------- the loop

@dataclass
class TrainResult:
    config: TrainingConfig
    manifest: dict
    io: ModelIO
    model: nn.Module  # unwrapped, on CPU after training, eval mode
    rank: int = 0
    world_size: int = 1
    run_key: str = ""
    global_step: int = 0
    epochs_completed: int = 0
    finished: bool = False  # False: stopped by `stop_after_steps` (a simulated kill)
    stopped_early: bool = False
    resumed_from: str | None = None
    checkpoint_key: str | None = None
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    throughput: dict[str, float] = field(default_factory=dict)  # whole run
    run_id: str | None = None  # MLflow
    weights_sha256: str = ""
    tracker: object = field(default=None, repr=False)  # registration continues this MLflow run

    def summary(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, "run_key": self.run_key,
                "global_step": self.global_step, "epochs_completed": self.epochs_completed,
                "finished": self.finished, "stopped_early": self.stopped_early,
                "resumed_from": self.resumed_from, "checkpoint_key": self.checkpoint_key,
                "history": self.history, "throughput": self.throughput,
                "run_id": self.run_id, "weights_sha256": self.weights_sha256,
                "task": self.io.task, "inputs": list(self.io.inputs)}


def _inputs(batch: dict, io: ModelIO, device: torch.device) -> list[torch.Tensor]:
    return [batch[name].to(device, non_blocking=True) for name in io.inputs]


def _evaluate_split(model: nn.Module, config: TrainingConfig, lake: Store, split: str,
                    io: ModelIO, env: DistEnv, device: torch.device) -> dict[str, float] | None:
    """Loss and task metrics on a split, each rank scoring its share, summed over ranks."""
    stats = torch.zeros(M.stats_size(io.task, io.outputs), dtype=torch.float64)
    loss_fn = loss_function(io.task)
    loader = load(config.dataset.name, config.dataset.version, split, lake=lake,
                  batch_size=config.evaluation.batch_size, num_workers=0, rank=env.rank,
                  world_size=env.world_size, augment=False)
    model.eval()
    with torch.no_grad(), _rng_fence():
        for batch in loader:
            target = batch["label"].to(device)
            out = model(*_inputs(batch, io, device)).float()
            stats += M.batch_stats(io.task, out, target, loss_fn(out, target))
    model.train()
    if env.distributed:
        dist.all_reduce(stats)
    if not stats[1]:
        return None
    return M.metrics_from_stats(io.task, stats, io.outputs)


def train(config: TrainingConfig, lake: Store, *, run_key: str | None = None,
          resume: bool = True, stop_after_steps: int | None = None, track: bool = True,
          log: Log = print) -> TrainResult:
    """Train (or resume training) a model on the config's dataset version.

    `stop_after_steps` stops right after that global step without any extra
    checkpoint, as a kill would (tests). `track=False` logs nothing to MLflow.
    """
    env = dist_env()
    created_group = _init_process_group(env, config.distributed.backend)
    device = (torch.device("cuda", env.local_rank) if torch.cuda.is_available()
              else torch.device("cpu"))
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if config.training.cpu_threads:
            torch.set_num_threads(config.training.cpu_threads)
    try:
        return _train(config, lake, env, device, run_key or default_run_key(config, env.world_size),
                      resume, stop_after_steps, track, log)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
        if created_group:
            dist.destroy_process_group()


def _train(config: TrainingConfig, lake: Store, env: DistEnv, device: torch.device,
           run_key: str, resume: bool, stop_after_steps: int | None, track: bool,
           log: Log) -> TrainResult:
    hp = config.training
    manifest = read_manifest(config.dataset.name, config.dataset.version, lake)
    splits = manifest["splits"]
    for role, split in config.dataset.splits.model_dump().items():
        if split not in splits:
            raise ValueError(f"dataset {config.dataset.name} {config.dataset.version} has no "
                             f"split {split!r} (dataset.splits.{role}); it has "
                             f"{', '.join(splits)}")
    arch = ARCHITECTURES[config.model.architecture]
    io = io_for_dataset(arch, {**manifest["spec"], "name": manifest["name"]})
    main_metric = M.main_metric(io.task, config.evaluation.main_metric)

    train_split = config.dataset.splits.train
    total = splits[train_split]["samples"]
    # every rank runs as many steps as the smallest rank's share allows
    steps_per_epoch = rank_stream_length(total, env.world_size - 1, env.world_size) \
        // hp.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"dataset {config.dataset.name} {config.dataset.version} split "
                         f"{train_split} has {total} samples: not one batch of {hp.batch_size} "
                         f"per process for {env.world_size} process(es); lower "
                         f"training.batch_size")
    total_steps = hp.epochs * steps_per_epoch
    if hp.max_steps:
        total_steps = min(total_steps, hp.max_steps)

    _seed_everything(hp.seed)
    model = build_model(config.model.architecture, config.model.params, io).to(device)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total_steps))
    amp_dtype = _amp_dtype(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = loss_function(io.task)

    ckpts = CheckpointStore(lake, checkpoint_prefix(config.name, run_key))
    pointer = ckpts.latest_pointer() if resume else None
    if pointer and pointer.get("finished"):
        if env.is_main:
            log(f"run {run_key}: the previous run finished at step {pointer['step']}; "
                f"training again from step 0")
        pointer = None
    if env.distributed:
        dist.barrier()  # every rank has read the pointer before rank 0 may replace it
    if pointer is None and env.is_main:
        ckpts.clear()

    epoch, samples_in_epoch, global_step = 0, 0, 0
    epoch_loss, epoch_samples = 0.0, 0
    early = {"best": None, "best_epoch": None, "bad_epochs": 0, "best_state": None}
    history: list[dict] = []
    run_id = None
    if pointer:
        state = ckpts.load(pointer)
        if state["config_hash"] != config.config_hash:
            raise ValueError(f"checkpoint {pointer['key']} was written for another config "
                             f"(hash {state['config_hash'][:12]}, this one "
                             f"{config.config_hash[:12]}); use another run key or do not resume")
        if state["world_size"] != env.world_size:
            raise ValueError(f"checkpoint {pointer['key']} was written by {state['world_size']} "
                             f"process(es); resume with the same number (got {env.world_size})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        epoch = state["position"]["epoch"]
        samples_in_epoch = state["position"]["samples_in_epoch"]
        epoch_loss = state["position"]["epoch_loss_sum"]
        epoch_samples = state["position"]["epoch_samples"]
        global_step = state["global_step"]
        early, history, run_id = state["early_stopping"], state["history"], state["mlflow_run_id"]
        if env.is_main:
            log(f"resuming {config.name} from {pointer['key']} (epoch {epoch}, "
                f"{samples_in_epoch} samples into it, step {global_step})")

    tracker = _start_tracker(config, manifest, io, lake, run_key, run_id, env, track, model)
    ddp_model: nn.Module = model
    if env.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if device.type == "cuda" else None)

    result = TrainResult(config, manifest, io, model, env.rank, env.world_size, run_key,
                         resumed_from=pointer["key"] if pointer else None, run_id=tracker.run_id)

    def checkpoint(finished: bool = False, **extra) -> None:
        if not env.is_main:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "rng": _rng_state(),
                 "position": {"epoch": epoch, "samples_in_epoch": samples_in_epoch,
                              "epoch_loss_sum": epoch_loss, "epoch_samples": epoch_samples},
                 "global_step": global_step, "early_stopping": early, "history": history,
                 "world_size": env.world_size, "io": io.to_dict(),
                 "config_hash": config.config_hash, "mlflow_run_id": tracker.run_id, **extra}
        result.checkpoint_key = ckpts.save(state, global_step, finished, config.checkpoint.keep)
        tracker.flush()

    run_started = time.perf_counter()
    run_samples, run_wait, run_busy = 0, 0.0, 0.0
    last_checkpoint = time.monotonic()
    every_steps, every_min = config.checkpoint.every_steps, config.checkpoint.every_minutes
    window = {"loss": 0.0, "samples": 0, "wait": 0.0, "time": 0.0}
    stop = global_step >= total_steps

    def epoch_batches(for_epoch: int, offset: int):
        loader = load(config.dataset.name, config.dataset.version, train_split, lake=lake,
                      batch_size=hp.batch_size, num_workers=hp.num_workers, offset=offset,
                      rank=env.rank, world_size=env.world_size, epoch=for_epoch, shuffle=True,
                      seed=hp.seed)
        with _rng_fence():
            return iter(loader)  # with workers, they start decoding now

    upcoming = None  # the next epoch's batches, started before this epoch ends
    model.train()
    while not stop and epoch < hp.epochs:
        if upcoming is not None and samples_in_epoch == 0:
            batches, upcoming = upcoming, None
        else:
            batches = epoch_batches(epoch, samples_in_epoch)
        while samples_in_epoch // hp.batch_size < steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(batches)
            t_data = time.perf_counter() - t0
            inputs = _inputs(batch, io, device)
            target = batch["label"].to(device, non_blocking=True)
            n = target.shape[0]
            with (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype
                  else contextlib.nullcontext()):
                loss = loss_fn(ddp_model(*inputs).float(), target) / n
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if hp.grad_clip_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_value = float(loss.detach())  # synchronises CUDA, so the timing is real
            t_step = time.perf_counter() - t0

            global_step += 1
            samples_in_epoch += n
            epoch_loss += loss_value * n
            epoch_samples += n
            run_samples += n * env.world_size
            run_wait += t_data
            run_busy += t_step
            window["loss"] += loss_value * n
            window["samples"] += n
            window["wait"] += t_data
            window["time"] += t_step
            if global_step % hp.log_every_steps == 0 or global_step == total_steps:
                tracker.log_metrics({
                    "train_loss": window["loss"] / window["samples"],
                    "lr": scheduler.get_last_lr()[0],
                    "samples_per_s": window["samples"] * env.world_size / window["time"],
                    "data_wait_share": window["wait"] / window["time"],
                    **_gpu_metrics(device)}, global_step)
                window = {"loss": 0.0, "samples": 0, "wait": 0.0, "time": 0.0}
            if global_step >= total_steps:
                stop = True
                break
            # start the next epoch's loader workers a few batches early, so the first
            # batches of an epoch are not decoded while the model waits
            if (hp.num_workers and upcoming is None and epoch + 1 < hp.epochs
                    and steps_per_epoch - samples_in_epoch // hp.batch_size == EPOCH_PREFETCH
                    and global_step + EPOCH_PREFETCH < total_steps):
                upcoming = epoch_batches(epoch + 1, 0)
            if (every_steps and global_step % every_steps == 0) or \
                    (every_min and time.monotonic() - last_checkpoint >= every_min * 60):
                checkpoint()
                last_checkpoint = time.monotonic()
            if stop_after_steps is not None and global_step >= stop_after_steps:
                return _interrupted(result, tracker, global_step, epoch, history)

        # end of the epoch (or of training): validate, early stopping, checkpoint
        val = _evaluate_split(model, config, lake, config.dataset.splits.val, io, env, device)
        if env.distributed:  # the epoch's loss over every rank's samples
            sums = torch.tensor([epoch_loss, float(epoch_samples)], dtype=torch.float64)
            dist.all_reduce(sums)
            epoch_loss, epoch_samples = float(sums[0]), int(sums[1])
        entry = {"epoch": epoch, "step": global_step,
                 "train_loss": epoch_loss / epoch_samples if epoch_samples else math.nan}
        if val:
            entry.update({f"val_{k}": v for k, v in val.items() if k != "samples"})
            tracker.log_metrics({f"val_{k}": v for k, v in val.items() if k != "samples"}
                                | {"epoch_train_loss": entry["train_loss"]}, global_step)
            monitored = "loss" if config.early_stopping.metric == "val_loss" else main_metric
            value = val[monitored]
            best = early["best"]
            delta = config.early_stopping.min_delta
            improved = best is None or (
                value > best + delta if M.HIGHER_IS_BETTER[monitored] else value < best - delta)
            if improved:
                early.update(best=value, best_epoch=epoch, bad_epochs=0,
                             best_state={k: v.detach().cpu().clone()
                                         for k, v in model.state_dict().items()})
            else:
                early["bad_epochs"] += 1
            if config.early_stopping.enabled and early["bad_epochs"] >= \
                    config.early_stopping.patience:
                result.stopped_early = stop = True
                if env.is_main:
                    log(f"early stopping after epoch {epoch}: val {monitored} did not improve "
                        f"for {early['bad_epochs']} epoch(s) (best {early['best']:.4g} at epoch "
                        f"{early['best_epoch']})")
        history.append(entry)
        if env.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                              if k not in ("epoch", "step") and isinstance(v, float))
            log(f"epoch {epoch} (step {global_step}/{total_steps}): {shown}")
        epoch += 1
        samples_in_epoch, epoch_loss, epoch_samples = 0, 0.0, 0
        if stop_after_steps is not None and global_step >= stop_after_steps and not stop:
            return _interrupted(result, tracker, global_step, epoch, history)
        if not stop and epoch < hp.epochs:
            checkpoint()
            last_checkpoint = time.monotonic()

    upcoming = None  # early stopping: the next epoch's workers are not needed
    if config.early_stopping.restore_best and early["best_state"] is not None:
        model.load_state_dict(early["best_state"])
    result.global_step, result.epochs_completed, result.history = global_step, epoch, history
    result.finished = True
    elapsed = time.perf_counter() - run_started
    result.throughput = {
        "samples_per_s": run_samples / run_busy if run_busy else 0.0,
        "data_wait_share": run_wait / run_busy if run_busy else 0.0,
        "train_seconds": elapsed}
    result.weights_sha256 = weights_sha256(model)
    checkpoint(finished=True, summary=result.summary())  # the summary: reusing a finished run
    tracker.log_metrics({"run_samples_per_s": result.throughput["samples_per_s"],
                         "run_data_wait_share": result.throughput["data_wait_share"]},
                        global_step)
    if early["best_epoch"] is not None:
        tracker.set_tags({"robolake.best_epoch": str(early["best_epoch"])})
    tracker.flush()
    model.eval()
    model.cpu()
    result.tracker = tracker
    return result


def _interrupted(result: TrainResult, tracker, step: int, epoch: int,
                 history: list[dict]) -> TrainResult:
    result.global_step, result.epochs_completed, result.history = step, epoch, history
    result.finished = False
    result.model.eval()
    result.weights_sha256 = weights_sha256(result.model)
    tracker.end("KILLED")
    return result


def _start_tracker(config, manifest, io, lake, run_key, run_id, env, track, model):
    if not (track and env.is_main):
        return M.NullTracker()
    from robolake.models import tracking  # imports mlflow (seconds): only when tracking
    n_params = sum(p.numel() for p in model.parameters())
    return tracking.RunTracker.start_training(config, manifest, io, lake, run_key=run_key,
                                              run_id=run_id, world_size=env.world_size,
                                              n_params=n_params)


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    """`python -m robolake.models.train --config X` (also under `torchrun`): train, then
    register the model and its ONNX export in MLflow (rank 0)."""
    parser = argparse.ArgumentParser(prog="python -m robolake.models.train",
                                     description=main.__doc__)
    parser.add_argument("--config", required=True, help="training config YAML")
    parser.add_argument("--lake", help="lake root (default: $ROBOLAKE_LAKE or ./lake)")
    parser.add_argument("--run-key", help="checkpoint namespace (default: config hash + "
                                          "world size)")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--no-register", action="store_true",
                        help="train (and track) only; no registered model or ONNX export")
    parser.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    parser.add_argument("--stop-after-steps", type=int, help="stop after this step (tests)")
    parser.add_argument("--result-json", help="write this rank's summary here ({rank} is "
                                              "replaced by the rank)")
    args = parser.parse_args(argv)

    from robolake.models.pipeline import train_in_process

    env = dist_env()
    summary = train_in_process(
        args.lake, args.config, run_key=args.run_key, resume=not args.no_resume,
        register=not (args.no_register or args.no_mlflow), track=not args.no_mlflow,
        stop_after_steps=args.stop_after_steps,
        log=(lambda m: print(m, flush=True)) if env.is_main else (lambda m: None))
    if args.result_json:
        path = Path(args.result_json.replace("{rank}", str(env.rank)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str))
    if env.is_main:
        print(json.dumps({k: summary.get(k) for k in ("model", "version", "global_step",
                                                       "weights_sha256", "run_id")},
                         default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
