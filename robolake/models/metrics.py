"""Task metrics from sufficient statistics, so ranks can sum them (all_reduce) first.

- scenario (classification): a confusion matrix -> accuracy, macro-F1 (mean F1 over
  the classes that occur in the labels or the predictions, as scikit-learn does);
- ego_motion (regression): per-output sums of |error| and error² -> MAE, RMSE.
"""

from __future__ import annotations

import math

import torch

HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "mae": False, "rmse": False,
                    "loss": False}
DEFAULT_MAIN_METRIC = {"scenario": "macro_f1", "ego_motion": "mae"}
REGRESSION_OUTPUTS = ("speed", "yaw_rate")


def main_metric(task: str, configured: str = "auto") -> str:
    if configured == "auto":
        return DEFAULT_MAIN_METRIC[task]
    if (configured in ("accuracy", "macro_f1")) != (task == "scenario"):
        raise ValueError(f"evaluation.main_metric {configured!r} does not apply to {task} "
                         f"models; use auto, "
                         f"{'accuracy or macro_f1' if task == 'scenario' else 'mae or rmse'}")
    return configured


def is_better(metric: str, a: float, b: float) -> bool:
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def stats_size(task: str, outputs: int) -> int:
    return 2 + (outputs * outputs if task == "scenario" else 2 * outputs)


def batch_stats(task: str, outputs: torch.Tensor, target: torch.Tensor,
                loss_sum: torch.Tensor) -> torch.Tensor:
    """[loss sum, n, confusion matrix (true x predicted) or |e| sums and e² sums]."""
    n = outputs.shape[0]
    k = outputs.shape[1]
    head = torch.stack([loss_sum.detach().double().cpu(), torch.tensor(float(n)).double()])
    if task == "scenario":
        pred = outputs.argmax(dim=1).cpu()
        conf = torch.bincount(target.cpu() * k + pred, minlength=k * k).double()
        return torch.cat([head, conf])
    err = (outputs.detach().float() - target.float()).cpu().double()
    return torch.cat([head, err.abs().sum(0), (err * err).sum(0)])


def metrics_from_stats(task: str, stats: torch.Tensor, outputs: int) -> dict[str, float]:
    n = float(stats[1])
    out = {"loss": float(stats[0]) / n if n else math.nan, "samples": n}
    if task == "scenario":
        out.update(classification_metrics(stats[2:].view(outputs, outputs)))
    else:
        abs_sum, sq_sum = stats[2:2 + outputs], stats[2 + outputs:]
        out.update(regression_metrics(abs_sum, sq_sum, n))
    return out


def classification_metrics(confusion: torch.Tensor) -> dict[str, float]:
    confusion = confusion.double()
    total = float(confusion.sum())
    if not total:
        return {"accuracy": math.nan, "macro_f1": math.nan}
    tp = confusion.diag()
    actual, predicted = confusion.sum(1), confusion.sum(0)
    present = (actual + predicted) > 0
    f1 = torch.where(actual + predicted > 0, 2 * tp / (actual + predicted).clamp(min=1), 0.0)
    return {"accuracy": float(tp.sum()) / total, "macro_f1": float(f1[present].mean())}


def regression_metrics(abs_sum: torch.Tensor, sq_sum: torch.Tensor, n: float) -> dict[str, float]:
    if not n:
        return {"mae": math.nan, "rmse": math.nan}
    mae = abs_sum.double() / n
    mse = sq_sum.double() / n
    out = {"mae": float(mae.mean()), "rmse": float(mse.mean().sqrt())}
    for i, name in enumerate(REGRESSION_OUTPUTS[: len(mae)]):
        out[f"mae_{name}"] = float(mae[i])
        out[f"rmse_{name}"] = float(mse[i].sqrt())
    return out


class NullTracker:
    """Ranks other than 0, and runs with tracking off, log nothing."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass
