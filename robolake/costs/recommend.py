"""The instance recommender: which GPU node a training config needs, and what it costs.

`recommend(config, io, prices)` estimates the peak memory of one training process
(robolake.costs.memory), adds the CUDA context and a headroom, and prices every
GPU instance type with enough GPUs for the config's processes per node: it fits when one
GPU's memory holds a process. The cheapest fitting type per hour is chosen; the
time per epoch comes from the step's FLOPs, the samples per epoch shared by every process
of every node (`distributed.nnodes` x `nproc_per_node`) and the GPU's peak throughput at
the config's precision times an efficiency (configs/prices.yaml), so it is an estimate for
planning, not a benchmark (small networks are bound by data loading, which this does not
see). An epoch's cost counts every node.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from robolake.costs.memory import MemoryEstimate, estimate_memory, precision_of
from robolake.costs.prices import GIB, Prices
from robolake.models.architectures import ARCHITECTURES, ModelIO, io_for_dataset
from robolake.models.config import TrainingConfig

CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # the CUDA context and kernels, outside the allocator
HEADROOM = 0.2  # fragmentation of the caching allocator, a longer batch, a newer library


@dataclass(frozen=True)
class Candidate:
    pool: str
    instance_type: str
    gpu: str
    gpu_memory_gib: float
    gpus: int  # on the node
    fits: bool
    on_demand_per_h: float  # of the GPUs asked for on one node (a share of a multi-GPU node)
    spot_per_h: float
    epoch_hours: float | None  # None when the samples per epoch are unknown
    nodes: int = 1  # of this type, each asked for the same GPUs (multi-node DDP)

    @property
    def epoch_cost(self) -> float | None:
        return (None if self.epoch_hours is None
                else self.epoch_hours * self.on_demand_per_h * self.nodes)


@dataclass(frozen=True)
class Recommendation:
    config: str
    architecture: str
    processes: int  # per node: the GPUs one node (pod) asks for
    nodes: int
    memory: MemoryEstimate
    needed_bytes: int  # per GPU: peak + CUDA context, times (1 + headroom)
    samples_per_epoch: int | None
    candidates: tuple[Candidate, ...]
    chosen: Candidate | None  # None: no type fits

    @property
    def fitting_types(self) -> list[str]:
        """Types of the chosen pool that fit (the pod may land on any of them)."""
        if self.chosen is None:
            return []
        return [c.instance_type for c in self.candidates
                if c.fits and c.pool == self.chosen.pool]

    def to_dict(self) -> dict:
        return {"config": self.config, "architecture": self.architecture,
                "processes": self.processes, "nodes": self.nodes,
                "memory": self.memory.to_dict(),
                "needed_bytes": self.needed_bytes, "needed_gib": self.needed_bytes / GIB,
                "samples_per_epoch": self.samples_per_epoch,
                "candidates": [{**asdict(c), "epoch_cost": c.epoch_cost}
                               for c in self.candidates],
                "chosen": asdict(self.chosen) if self.chosen else None,
                "fitting_types": self.fitting_types}


def needed_bytes(memory: MemoryEstimate) -> int:
    return int((memory.peak + CUDA_CONTEXT_BYTES) * (1 + HEADROOM))


def recommend(config: TrainingConfig, io: ModelIO, prices: Prices,
              samples_per_epoch: int | None = None) -> Recommendation:
    """Price every GPU type with enough GPUs for the config's processes; choose the
    cheapest one whose GPUs each hold a process's peak with headroom."""
    processes, nodes = config.distributed.nproc_per_node, config.distributed.nnodes
    world = config.distributed.world_size
    precision = precision_of(config)
    memory = estimate_memory(config, io, precision=precision, world_size=world)
    need = needed_bytes(memory)
    candidates = []
    for pool_name, pool in prices.pools.items():
        for name, t in pool.types.items():
            gpu = prices.gpu_of(t)
            if gpu is None or t.gpus < processes:
                continue
            epoch_h = None
            if samples_per_epoch:
                tflops = gpu.tflops_half if precision in ("bf16", "fp16") else gpu.tflops_fp32
                steps = samples_per_epoch / (config.training.batch_size * world)
                step_s = prices.compute.step_overhead_s + memory.flops_per_step / (
                    tflops * 1e12 * prices.compute.efficiency)
                epoch_h = steps * step_s / 3600
            share = processes / t.gpus  # the GPUs asked for: a share of a multi-GPU node
            candidates.append(Candidate(pool_name, name, t.gpu or "", gpu.memory_gib,
                                        t.gpus, gpu.memory_gib * GIB >= need,
                                        t.on_demand * share, t.spot * share, epoch_h, nodes))
    candidates.sort(key=lambda c: (c.on_demand_per_h, c.instance_type))
    chosen = next((c for c in candidates if c.fits), None)
    return Recommendation(config.name, config.model.architecture, processes, nodes, memory,
                          need, samples_per_epoch, tuple(candidates), chosen)


@functools.lru_cache(maxsize=64)
def _recommend_cached(config_json: str, io_json: str, prices_json: str,
                      samples_per_epoch: int | None) -> Recommendation:
    from robolake.costs.prices import Prices
    from robolake.models.config import parse_config

    return recommend(parse_config(json.loads(config_json)),
                     ModelIO.from_dict(json.loads(io_json)),
                     Prices.model_validate_json(prices_json), samples_per_epoch)


def recommend_for_spec(config: TrainingConfig, spec: dict, prices: Prices,
                       samples_per_epoch: int | None = None) -> Recommendation:
    """`recommend` for a config on a dataset spec, computed once per process for the
    same config, spec and prices (the code location asks at every load)."""
    io = io_for_config(config, spec)
    return _recommend_cached(config.model_dump_json(), json.dumps(io.to_dict()),
                             prices.model_dump_json(), samples_per_epoch)


def io_for_config(config: TrainingConfig, spec: dict) -> ModelIO:
    """The model's inputs for a config on a dataset spec (parsed YAML or a manifest's)."""
    return io_for_dataset(ARCHITECTURES[config.model.architecture],
                          {**spec, "name": spec.get("name", config.dataset.name)})


def find_spec(specs_dir: Path, dataset: str) -> dict | None:
    """The dataset spec named `dataset` in `specs_dir` (by its `name` field), parsed."""
    from robolake.datasets.spec import load_spec

    for path in sorted(Path(specs_dir).glob("*.y*ml")):
        spec = load_spec(path)
        if spec.name == dataset:
            return spec.model_dump(mode="json")
    return None


def _size(n: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:,.1f} {unit}"
    return f"{n} B"


def _duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{hours:.1f} h"


def format_table(rec: Recommendation) -> str:
    """The recommendation for people: the memory estimate, then every candidate type."""
    m = rec.memory
    lines = [f"{rec.config}: {rec.architecture}, {m.parameters:,} parameters, batch "
             f"{m.batch_size} x {rec.processes} process(es)"
             + (f" x {rec.nodes} nodes" if rec.nodes > 1 else "") + f", {m.precision}",
             "peak memory per process (estimate):"]
    for label, value in (("weights", m.weights), ("gradients", m.gradients),
                         ("optimiser states", m.optimizer_states),
                         ("activations (saved)", m.activations), ("batch", m.inputs),
                         ("DDP buckets", m.ddp_buckets), ("kernel workspace", m.workspace)):
        lines.append(f"  {label:<22}{_size(value):>14}")
    lines.append(f"  {'peak (tensors at once)':<22}{_size(m.peak):>14}")
    lines.append(f"  needed per GPU with CUDA context and {HEADROOM:.0%} headroom: "
                 f"{_size(rec.needed_bytes)}")
    header = f"{'':2}{'instance':<15}{'pool':<14}{'GPU':<10}{'GPU GiB':>8}{'GPUs':>5}" \
             f"{'fits':>6}{'$/h':>9}{'Spot $/h':>9}{'epoch':>10}{'$/epoch':>10}"
    lines += ["", f"{rec.samples_per_epoch or 'unknown'} training samples per epoch; $/h is "
                  "the GPUs asked for on one node (a share of a multi-GPU node)"
              + (f"; $/epoch counts all {rec.nodes} nodes" if rec.nodes > 1 else ""), header]
    for c in rec.candidates:
        mark = "*" if c is rec.chosen else ""
        cost = f"{c.epoch_cost:.4f}" if c.epoch_cost is not None else "-"
        lines.append(f"{mark:<2}{c.instance_type:<15}{c.pool:<14}{c.gpu:<10}"
                     f"{c.gpu_memory_gib:>8g}{c.gpus:>5}{'yes' if c.fits else 'no':>6}"
                     f"{c.on_demand_per_h:>9.3f}{c.spot_per_h:>9.3f}"
                     f"{_duration(c.epoch_hours):>10}{cost:>10}")
    if rec.chosen is None:
        lines.append("no instance type fits: lower training.batch_size or the model's size")
    else:
        lines.append(f"recommended: {rec.chosen.instance_type} ({rec.chosen.pool})")
    return "\n".join(lines)


def to_json(rec: Recommendation) -> str:
    return json.dumps(rec.to_dict(), indent=2, sort_keys=True)
