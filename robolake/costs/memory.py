"""Peak training memory of a config, estimated before it asks for a GPU.

The estimate replays one training process's first two steps (the same loss,
zero_grad, clipping and optimiser as robolake.models.train `_step`) on *fake*
tensors at the config's batch size and precision: no data and no arithmetic, only
shapes, so a 256-sample batch of camera frames costs milliseconds. A dispatch mode
follows every tensor storage from creation to release, which gives the peak of what
is alive at once: weights, gradients, optimiser states (AdamW's two moments, created
by the first step), the activations autograd saves (measured with saved-tensor
hooks, in bf16/fp16 under autocast when the config trains in half precision), the
batch, and the backward pass's and the optimiser's temporaries. DDP adds its
gradient buckets (a second copy of the gradients) per process.

What tensors cannot show, convolution kernels' own scratch buffers and allocator
rounding, is `KERNEL_WORKSPACE` on top (on CPU it measured 0-30 % for the registry's
networks, strided convolutions the most). `measure_peak_bytes` measures the real peak
on CPU, from the profiler's record of every allocation, to check the estimate
(tests/test_costs_recommend.py, within 25 % for every architecture);
`measure_cuda_peak_bytes` measures it on a GPU (benchmarks/gpu_paths.py).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from robolake.models.architectures import ModelIO, build_model
from robolake.models.config import TrainingConfig

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1}  # fp32 tensors per parameter
KERNEL_WORKSPACE = 0.10  # share added for scratch buffers that are not tensors


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int  # count
    weights: int  # bytes from here on
    gradients: int
    optimizer_states: int
    activations: int  # saved for backward at the batch size and precision
    inputs: int  # one batch
    ddp_buckets: int
    tensors_peak: int  # the replay's peak of live tensors (all of the above at once)
    flops_per_step: int  # forward + backward, matmuls and convolutions
    precision: str  # fp32, bf16 or fp16
    batch_size: int

    @property
    def workspace(self) -> int:
        return int(KERNEL_WORKSPACE * self.tensors_peak)

    @property
    def peak(self) -> int:
        return self.tensors_peak + self.ddp_buckets + self.workspace

    def to_dict(self) -> dict:
        return {**asdict(self), "workspace": self.workspace, "peak": self.peak}


def precision_of(config: TrainingConfig, gpu_bf16: bool = True) -> str:
    """The precision the config trains in on a GPU (`auto`: bf16 where supported)."""
    mode = config.training.mixed_precision
    if mode == "off":
        return "fp32"
    if mode == "auto":
        return "bf16" if gpu_bf16 else "fp16"
    return mode


class _LiveTensors(TorchDispatchMode):
    """Bytes of tensor storages alive at once: each op's new storages are counted until
    Python releases them (views of a counted storage are not counted again)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _release(self, key: int, size: int) -> None:
        self._refs.pop(key, None)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key in self._refs:
                    continue
                size = storage.nbytes()
                self._refs[key] = weakref.ref(
                    storage, lambda _r, k=key, s=size: self._release(k, s))
                self.live += size
                self.peak = max(self.peak, self.live)
        return out


def _training_steps(config: TrainingConfig, io: ModelIO, precision: str, steps: int,
                    on_forward=None, device: str = "cpu") -> None:
    """`steps` training steps as robolake.models.train runs them (model and optimiser
    created here, so whatever tracks allocations sees them too)."""
    from robolake.models.train import loss_function, make_optimizer

    hp = config.training
    torch.manual_seed(0)
    model = build_model(config.model.architecture, dict(config.model.params), io).train()
    inputs = list(io.example_inputs(hp.batch_size))
    target = (torch.randint(0, io.outputs, (hp.batch_size,)) if io.task == "scenario"
              else torch.randn(hp.batch_size, io.outputs))
    if device != "cpu":  # (fake tensors, which the estimate replays on, stay where they are)
        model, target = model.to(device), target.to(device)
        inputs = [t.to(device) for t in inputs]
    optimizer = make_optimizer(config, model.parameters())
    loss_fn = loss_function(io.task)
    autocast = (torch.autocast(device, dtype=HALF[precision]) if precision in HALF
                else contextlib.nullcontext())
    for step in range(steps):
        hooks = on_forward(model) if on_forward and step == 0 else contextlib.nullcontext()
        with hooks, autocast:
            loss = loss_fn(model(*inputs).float(), target) / hp.batch_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if hp.grad_clip_norm:
            nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip_norm)
        optimizer.step()


def estimate_memory(config: TrainingConfig, io: ModelIO, *, precision: str = "fp32",
                    world_size: int | None = None) -> MemoryEstimate:
    """Peak bytes one training process holds for `config` on inputs shaped by `io`."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    saved: dict[int, int] = {}
    counts: dict[str, int] = {}

    def saved_tensor_hooks(model: nn.Module):
        counts["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        params = {id(p.untyped_storage()) for p in model.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if id(storage) not in params:
                saved[id(storage)] = storage.nbytes()
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    flops = FlopCounterMode(display=False)
    with FakeTensorMode(), _LiveTensors() as live:
        _training_steps(config, io, precision, 2, saved_tensor_hooks)
    with FakeTensorMode(), flops:
        _training_steps(config, io, precision, 1)
    n = counts["parameters"]
    world = world_size or config.distributed.world_size
    opt = config.training.optimizer
    states = 0 if opt.name == "sgd" and not opt.momentum else OPTIMIZER_STATES[opt.name]
    batch = config.training.batch_size
    return MemoryEstimate(
        parameters=n, weights=4 * n, gradients=4 * n, optimizer_states=4 * n * states,
        activations=sum(saved.values()),
        inputs=batch * sum(4 * _numel(s) for s in io.shapes.values()),
        ddp_buckets=4 * n if world > 1 else 0, tensors_peak=live.peak,
        flops_per_step=int(flops.get_total_flops()), precision=precision, batch_size=batch)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def measure_peak_bytes(config: TrainingConfig, io: ModelIO, steps: int = 2) -> int:
    """The measured peak of every CPU allocation of `steps` real fp32 training steps
    (model, optimiser, batch and all), from the profiler's allocation records: the same
    loss, zero_grad, clipping and optimiser step as robolake.models.train."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _training_steps(config, io, "fp32", steps)
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def measure_cuda_peak_bytes(config: TrainingConfig, io: ModelIO, precision: str = "fp32",
                            steps: int = 2) -> int:
    """The measured peak of CUDA memory that `steps` real training steps allocate at
    `precision` (PyTorch's caching allocator: tensors, cuDNN and cuBLAS workspaces), above
    what was allocated before: what the estimate stands for on a GPU."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _training_steps(config, io, precision, steps, device="cuda")
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base
