"""ONNX export next to the PyTorch model, checked against PyTorch with onnxruntime.

The graph takes the model's inputs by their batch-field names (`imu`, `gps`,
`lidar`, `camera`) with a dynamic batch dimension and returns `output`
(scenario logits or [speed, yaw rate]).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robolake.models.architectures import ModelIO


@dataclass(frozen=True)
class OnnxCheck:
    max_abs_diff: float
    atol: float
    rtol: float
    samples: int
    ok: bool

    def as_dict(self) -> dict:
        return {"onnx_max_abs_diff": self.max_abs_diff, "onnx_matches": self.ok,
                "onnx_checked_samples": self.samples}


def export_onnx(model: nn.Module, path: str | Path, model_io: ModelIO | None = None) -> Path:
    """Export `model` (eval mode, CPU) to `path` with the torch.export-based exporter."""
    model_io = model_io or model.io
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    example = model_io.example_inputs(batch=2)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = tuple({0: batch} for _ in model_io.inputs)
    quiet = io.StringIO()
    # the exporter prints progress and warns about unused optional dependencies
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(model, example, str(path), input_names=list(model_io.inputs),
                              output_names=["output"], dynamic_shapes=dynamic, dynamo=True,
                              external_data=False, verbose=False)
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    return path


def onnx_session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, model_io: ModelIO, inputs: list[torch.Tensor]) -> np.ndarray:
    feed = {name: t.detach().cpu().numpy().astype(np.float32)
            for name, t in zip(model_io.inputs, inputs, strict=True)}
    return session.run(["output"], feed)[0]


def check_onnx(model: nn.Module, path: str | Path, batches: list[list[torch.Tensor]] | None = None,
               atol: float = 1e-4, rtol: float = 1e-3, model_io: ModelIO | None = None
               ) -> OnnxCheck:
    """Compare ONNX Runtime's outputs with PyTorch's on `batches` (default: random inputs)."""
    model_io = model_io or model.io
    model = model.eval().cpu()
    batches = batches or [list(model_io.example_inputs(batch=8, seed=s)) for s in (1, 2)]
    session = onnx_session(path)
    worst, ok, samples = 0.0, True, 0
    with torch.no_grad():
        for inputs in batches:
            expected = model(*inputs).float().numpy()
            got = run_onnx(session, model_io, inputs)
            diff = np.abs(got - expected)
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
            ok = ok and bool(np.all(diff <= atol + rtol * np.abs(expected)))
            samples += expected.shape[0]
    return OnnxCheck(worst, atol, rtol, samples, ok)
