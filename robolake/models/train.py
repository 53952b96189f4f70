"""The training loop: seeded, checkpointed to the lake, resumable, DDP under torchrun.

Determinism. On CPU a run is a function of the config (seed included), the
dataset version and the world size: weights are initialised after seeding,
batches come from the loader in a fixed order (robolake.datasets.loader),
deterministic algorithms are on, and every RNG draw that is not part of
training (creating a DataLoader iterator draws a worker seed) is fenced off.

Checkpoints. Every `checkpoint.every_steps` steps or `every_minutes` minutes,
at each epoch's end, and on SIGTERM (a Spot node's two-minute notice: the step in
flight finishes, every rank stops at the same step, and `train` raises
`CapacityLost`, which the pool's retry policy retries), rank 0 writes model,
optimiser, scheduler, AMP scaler, RNG states (torch, CUDA, numpy, random), the
loader position (epoch, samples consumed this epoch) and the early-stopping state to
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

import contextlib
import hashlib
import io
import json
import math
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from robolake.datasets.loader import load, rank_stream_length, read_manifest
from robolake.errors import CapacityLost
from robolake.models import metrics as M
from robolake.models.architectures import (
    ARCHITECTURES,
    ModelIO,
    build_model,
    io_for_dataset,
)
from robolake.models.config import TrainingConfig
from robolake.storage import Store, delete_key

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
    delete_key(store, key)


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
    return (nn.CrossEntropyLoss(reduction="sum") if task == "scenario"
            else nn.MSELoss(reduction="sum"))


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
    sigterm = threading.Event()
    previous = _handle_sigterm(sigterm)
    try:
        run = _Run(config, lake, env, device, run_key or default_run_key(config, env.world_size),
                   resume, track, log)
        run.sigterm = sigterm
        result = run.train(stop_after_steps)
        if run.preempted:
            raise CapacityLost(f"SIGTERM at step {result.global_step}: checkpointed to "
                               f"{result.checkpoint_key}; a retry resumes from it")
        return result
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
        if created_group:
            dist.destroy_process_group()


def _handle_sigterm(event: threading.Event):
    """On SIGTERM (a Spot node's two-minute notice, a pod deleted) set `event`: training
    checkpoints after the current step and stops. Returns the previous handler (None when
    not on the main thread, where Python cannot install one)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, lambda _signum, _frame: event.set())


@dataclass(frozen=True)
class _Plan:
    """What the dataset version and the config fix before training starts."""

    manifest: dict
    io: ModelIO
    main_metric: str
    steps_per_epoch: int
    total_steps: int


def _plan(config: TrainingConfig, lake: Store, env: DistEnv) -> _Plan:
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
    steps_per_epoch = (rank_stream_length(total, env.world_size - 1, env.world_size)
                       // hp.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"dataset {config.dataset.name} {config.dataset.version} split "
                         f"{train_split} has {total} samples: not one batch of {hp.batch_size} "
                         f"per process for {env.world_size} process(es); lower "
                         f"training.batch_size")
    total_steps = hp.epochs * steps_per_epoch
    if hp.max_steps:
        total_steps = min(total_steps, hp.max_steps)
    return _Plan(manifest, io, main_metric, steps_per_epoch, total_steps)


def _no_best() -> dict:
    return {"best": None, "best_epoch": None, "bad_epochs": 0, "best_state": None}


@dataclass
class _Position:
    """Where training is, and what early stopping has seen: saved in every checkpoint."""

    epoch: int = 0
    samples_in_epoch: int = 0
    global_step: int = 0
    epoch_loss: float = 0.0  # loss × samples so far this epoch
    epoch_samples: int = 0
    early: dict = field(default_factory=_no_best)
    history: list[dict] = field(default_factory=list)  # one entry per finished epoch


@dataclass
class _Sums:
    """This rank's sums over some steps (since the last logged metrics, or the whole run)."""

    loss: float = 0.0  # loss × samples
    samples: int = 0
    wait: float = 0.0  # seconds waiting for data
    time: float = 0.0  # seconds in steps, waiting included

    def add(self, n: int, loss_value: float, t_data: float, t_step: float) -> None:
        self.loss += loss_value * n
        self.samples += n
        self.wait += t_data
        self.time += t_step


class _Run:
    """One call of `train`: set up (or resumed) in the constructor, then `train` runs the
    epochs. The state lives here so that each step of the loop can be a named method."""

    def __init__(self, config: TrainingConfig, lake: Store, env: DistEnv, device: torch.device,
                 run_key: str, resume: bool, track: bool, log: Log):
        self.config, self.hp, self.lake, self.env = config, config.training, lake, env
        self.device, self.run_key, self.log = device, run_key, log
        self.plan = _plan(config, lake, env)
        self.io = self.plan.io
        _seed_everything(self.hp.seed)  # before the weights are initialised
        self.model = build_model(config.model.architecture, config.model.params,
                                 self.io).to(device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(config, self.plan.total_steps))
        self.amp_dtype = _amp_dtype(config, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = loss_function(self.io.task)
        self.ckpts = CheckpointStore(lake, checkpoint_prefix(config.name, run_key))
        self.pos = _Position()
        pointer = self._resume_pointer(resume)
        run_id = self._restore(pointer) if pointer else None
        self.tracker = _start_tracker(config, self.plan.manifest, self.io, lake, run_key, run_id,
                                      env, track, self.model)
        self.ddp_model: nn.Module = self.model
        if env.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.local_rank] if device.type == "cuda" else None)
        self.result = TrainResult(config, self.plan.manifest, self.io, self.model, env.rank,
                                  env.world_size, run_key,
                                  resumed_from=pointer["key"] if pointer else None,
                                  run_id=self.tracker.run_id)
        self.started = time.perf_counter()
        self.whole_run, self.window = _Sums(), _Sums()
        self.last_checkpoint = time.monotonic()
        self.stop = self.pos.global_step >= self.plan.total_steps
        self.upcoming = None  # the next epoch's batches, started before this epoch ends
        self.sigterm = threading.Event()  # set by the SIGTERM handler (`train`)
        self.preempted = False

    # ----------------------------------------------------------------------- resuming

    def _resume_pointer(self, resume: bool) -> dict | None:
        """The checkpoint to resume from; without one, the run key's old checkpoints go."""
        pointer = self.ckpts.latest_pointer() if resume else None
        if pointer and pointer.get("finished"):
            if self.env.is_main:
                self.log(f"run {self.run_key}: the previous run finished at step "
                         f"{pointer['step']}; training again from step 0")
            pointer = None
        if self.env.distributed:
            dist.barrier()  # every rank has read the pointer before rank 0 may replace it
        if pointer is None and self.env.is_main:
            self.ckpts.clear()
        return pointer

    def _restore(self, pointer: dict) -> str | None:
        """Load the checkpoint's weights, optimiser, RNG states and position; return its
        MLflow run id (the resumed run logs to the same MLflow run)."""
        state = self.ckpts.load(pointer)
        if state["config_hash"] != self.config.config_hash:
            raise ValueError(f"checkpoint {pointer['key']} was written for another config "
                             f"(hash {state['config_hash'][:12]}, this one "
                             f"{self.config.config_hash[:12]}); use another run key or do not "
                             f"resume")
        if state["world_size"] != self.env.world_size:
            raise ValueError(f"checkpoint {pointer['key']} was written by {state['world_size']} "
                             f"process(es); resume with the same number (got "
                             f"{self.env.world_size})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        position = state["position"]
        self.pos = _Position(epoch=position["epoch"],
                             samples_in_epoch=position["samples_in_epoch"],
                             global_step=state["global_step"],
                             epoch_loss=position["epoch_loss_sum"],
                             epoch_samples=position["epoch_samples"],
                             early=state["early_stopping"], history=state["history"])
        if self.env.is_main:
            self.log(f"resuming {self.config.name} from {pointer['key']} (epoch "
                     f"{self.pos.epoch}, {self.pos.samples_in_epoch} samples into it, step "
                     f"{self.pos.global_step})")
        return state["mlflow_run_id"]

    def _checkpoint(self, finished: bool = False, **extra) -> None:
        self.last_checkpoint = time.monotonic()
        if not self.env.is_main:
            return
        pos = self.pos
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "rng": _rng_state(),
                 "position": {"epoch": pos.epoch, "samples_in_epoch": pos.samples_in_epoch,
                              "epoch_loss_sum": pos.epoch_loss,
                              "epoch_samples": pos.epoch_samples},
                 "global_step": pos.global_step, "early_stopping": pos.early,
                 "history": pos.history, "world_size": self.env.world_size,
                 "io": self.io.to_dict(), "config_hash": self.config.config_hash,
                 "mlflow_run_id": self.tracker.run_id, **extra}
        self.result.checkpoint_key = self.ckpts.save(state, pos.global_step, finished,
                                                     self.config.checkpoint.keep)
        self.tracker.flush()

    def _checkpoint_due(self) -> bool:
        every_steps, every_min = (self.config.checkpoint.every_steps,
                                  self.config.checkpoint.every_minutes)
        return bool((every_steps and self.pos.global_step % every_steps == 0)
                    or (every_min and time.monotonic() - self.last_checkpoint >= every_min * 60))

    # ----------------------------------------------------------------------- the loop

    def train(self, stop_after_steps: int | None) -> TrainResult:
        """Epochs until the last step or early stopping; `stop_after_steps` stops as a kill
        would (no extra checkpoint)."""
        self.model.train()
        while not self.stop and self.pos.epoch < self.hp.epochs:
            if self._train_epoch(stop_after_steps):
                return self._interrupted()
            self._end_epoch()
            if (stop_after_steps is not None and self.pos.global_step >= stop_after_steps
                    and not self.stop):
                return self._interrupted()
            if not self.stop and self.pos.epoch < self.hp.epochs:
                self._checkpoint()
        return self._finish()

    def _epoch_batches(self, epoch: int, offset: int) -> Iterator[dict]:
        loader = load(self.config.dataset.name, self.config.dataset.version,
                      self.config.dataset.splits.train, lake=self.lake,
                      batch_size=self.hp.batch_size, num_workers=self.hp.num_workers,
                      offset=offset, rank=self.env.rank, world_size=self.env.world_size,
                      epoch=epoch, shuffle=True, seed=self.hp.seed)
        with _rng_fence():
            return iter(loader)  # with workers, they start decoding now

    def _train_epoch(self, stop_after_steps: int | None) -> bool:
        """The rest of the current epoch's steps; True when stopped by `stop_after_steps`."""
        pos, hp, plan = self.pos, self.hp, self.plan
        if self.upcoming is not None and pos.samples_in_epoch == 0:
            batches, self.upcoming = self.upcoming, None
        else:
            batches = self._epoch_batches(pos.epoch, pos.samples_in_epoch)
        while pos.samples_in_epoch // hp.batch_size < plan.steps_per_epoch:
            self._step(batches)
            if pos.global_step >= plan.total_steps:
                self.stop = True
                return False
            # start the next epoch's loader workers a few batches early, so the first
            # batches of an epoch are not decoded while the model waits
            steps_left = plan.steps_per_epoch - pos.samples_in_epoch // hp.batch_size
            if (hp.num_workers and self.upcoming is None and pos.epoch + 1 < hp.epochs
                    and steps_left == EPOCH_PREFETCH
                    and pos.global_step + EPOCH_PREFETCH < plan.total_steps):
                self.upcoming = self._epoch_batches(pos.epoch + 1, 0)
            # every rank asks (a collective under DDP), before the time-based check
            if self._preempted() or self._checkpoint_due():
                self._checkpoint()
            if self.preempted or (stop_after_steps is not None
                                  and pos.global_step >= stop_after_steps):
                return True
        return False

    def _preempted(self) -> bool:
        """SIGTERM reached this process (or, under DDP, any rank): stop after this step."""
        flag = self.sigterm.is_set()
        if self.env.distributed:  # every rank must stop at the same step
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        self.preempted = self.preempted or flag
        return self.preempted

    def _step(self, batches: Iterator[dict]) -> None:
        """One optimiser step on the next batch, then the counters and step metrics."""
        hp, device = self.hp, self.device
        t0 = time.perf_counter()
        batch = next(batches)
        t_data = time.perf_counter() - t0
        inputs = _inputs(batch, self.io, device)
        target = batch["label"].to(device, non_blocking=True)
        n = target.shape[0]
        with (torch.autocast(device.type, dtype=self.amp_dtype) if self.amp_dtype
              else contextlib.nullcontext()):
            loss = self.loss_fn(self.ddp_model(*inputs).float(), target) / n
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if hp.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), hp.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        loss_value = float(loss.detach())  # synchronises CUDA, so the timing is real
        t_step = time.perf_counter() - t0

        pos = self.pos
        pos.global_step += 1
        pos.samples_in_epoch += n
        pos.epoch_loss += loss_value * n
        pos.epoch_samples += n
        self.whole_run.add(n, loss_value, t_data, t_step)
        self.window.add(n, loss_value, t_data, t_step)
        if pos.global_step % hp.log_every_steps == 0 or pos.global_step == self.plan.total_steps:
            w = self.window
            self.tracker.log_metrics({
                "train_loss": w.loss / w.samples,
                "lr": self.scheduler.get_last_lr()[0],
                "samples_per_s": w.samples * self.env.world_size / w.time,
                "data_wait_share": w.wait / w.time,
                **_gpu_metrics(device)}, pos.global_step)
            self.window = _Sums()

    def _end_epoch(self) -> None:
        """Validate, reduce the epoch's loss over the ranks, early stopping, history."""
        pos, env = self.pos, self.env
        val = _evaluate_split(self.model, self.config, self.lake, self.config.dataset.splits.val,
                              self.io, env, self.device)
        if env.distributed:  # the epoch's loss over every rank's samples
            sums = torch.tensor([pos.epoch_loss, float(pos.epoch_samples)], dtype=torch.float64)
            dist.all_reduce(sums)
            pos.epoch_loss, pos.epoch_samples = float(sums[0]), int(sums[1])
        entry = {"epoch": pos.epoch, "step": pos.global_step,
                 "train_loss": pos.epoch_loss / pos.epoch_samples if pos.epoch_samples
                 else math.nan}
        if val:
            scores = {f"val_{k}": v for k, v in val.items() if k != "samples"}
            entry.update(scores)
            self.tracker.log_metrics(scores | {"epoch_train_loss": entry["train_loss"]},
                                     pos.global_step)
            self._early_stopping(val)
        pos.history.append(entry)
        if env.is_main:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in entry.items()
                              if k not in ("epoch", "step") and isinstance(v, float))
            self.log(f"epoch {pos.epoch} (step {pos.global_step}/{self.plan.total_steps}): "
                     f"{shown}")
        pos.epoch += 1
        pos.samples_in_epoch, pos.epoch_loss, pos.epoch_samples = 0, 0.0, 0

    def _early_stopping(self, val: dict[str, float]) -> None:
        """Keep the best weights; stop after `patience` epochs without improvement."""
        rule, early = self.config.early_stopping, self.pos.early
        monitored = "loss" if rule.metric == "val_loss" else self.plan.main_metric
        value, best = val[monitored], early["best"]
        improved = best is None or (value > best + rule.min_delta
                                    if M.HIGHER_IS_BETTER[monitored]
                                    else value < best - rule.min_delta)
        if improved:
            early.update(best=value, best_epoch=self.pos.epoch, bad_epochs=0,
                         best_state={k: v.detach().cpu().clone()
                                     for k, v in self.model.state_dict().items()})
        else:
            early["bad_epochs"] += 1
        if rule.enabled and early["bad_epochs"] >= rule.patience:
            self.result.stopped_early = self.stop = True
            if self.env.is_main:
                self.log(f"early stopping after epoch {self.pos.epoch}: val {monitored} did not "
                         f"improve for {early['bad_epochs']} epoch(s) (best {early['best']:.4g} "
                         f"at epoch {early['best_epoch']})")

    # ----------------------------------------------------------------------- the end

    def _finish(self) -> TrainResult:
        self.upcoming = None  # early stopping: the next epoch's workers are not needed
        result, pos, early, tracker = self.result, self.pos, self.pos.early, self.tracker
        if self.config.early_stopping.restore_best and early["best_state"] is not None:
            self.model.load_state_dict(early["best_state"])
        result.global_step, result.epochs_completed, result.history = (
            pos.global_step, pos.epoch, pos.history)
        result.finished = True
        run = self.whole_run
        result.throughput = {
            "samples_per_s": run.samples * self.env.world_size / run.time if run.time else 0.0,
            "data_wait_share": run.wait / run.time if run.time else 0.0,
            "train_seconds": time.perf_counter() - self.started}
        result.weights_sha256 = weights_sha256(self.model)
        self._checkpoint(finished=True, summary=result.summary())  # reusing a finished run
        tracker.log_metrics({"run_samples_per_s": result.throughput["samples_per_s"],
                             "run_data_wait_share": result.throughput["data_wait_share"]},
                            pos.global_step)
        if early["best_epoch"] is not None:
            tracker.set_tags({"robolake.best_epoch": str(early["best_epoch"])})
        tracker.flush()
        self.model.eval()
        self.model.cpu()
        result.tracker = tracker
        return result

    def _interrupted(self) -> TrainResult:
        result = self.result
        result.global_step, result.epochs_completed, result.history = (
            self.pos.global_step, self.pos.epoch, self.pos.history)
        result.finished = False
        result.model.eval()
        result.weights_sha256 = weights_sha256(result.model)
        self.tracker.end("KILLED")
        return result


def _start_tracker(config: TrainingConfig, manifest: dict, io: ModelIO, lake: Store,
                   run_key: str, run_id: str | None, env: DistEnv, track: bool,
                   model: nn.Module):
    if not (track and env.is_main):
        return M.NullTracker()
    from robolake.models import tracking  # imports mlflow (seconds): only when tracking
    n_params = sum(p.numel() for p in model.parameters())
    return tracking.RunTracker.start_training(config, manifest, io, lake, run_key=run_key,
                                              run_id=run_id, world_size=env.world_size,
                                              n_params=n_params)
