"""Evaluation and the promotion gate.

A model is scored on the test split: task metrics (accuracy and macro-F1 for
scenario classifiers, MAE and RMSE for ego-motion regressors), a per-scenario
breakdown, robustness on the corner-case subset (frames whose
corner_case_score >= `evaluation.corner_case_threshold`), and speed (batched
samples/s, single-sample latency and FPS; with ONNX Runtime too when an export
is given). Predictions and PyTorch speed are taken on the GPU when there is one.

Failure (for failure rates): a classifier fails on a frame it misclassifies; a
regressor fails when |speed error| > `regression_tolerance.speed_mps` or
|yaw-rate error| > `regression_tolerance.yaw_rate_radps`.

Promotion (`decide_promotion`): the candidate replaces the production model
(MLflow alias `production`) only if
1. its corner-case failure rate is below `max_corner_case_failure_rate` (5 %),
   and the test split has corner cases at all (unless `require_corner_cases`
   is off), and
2. its main metric beats the production model's, scored now on the same test
   split, by the relative `margin` (default +2 %: macro-F1 >= 1.02 x baseline,
   or MAE <= 0.98 x baseline). With no production model yet, rule 1 alone
   decides.
The decision and every reason, passed or failed, are returned, set as tags on
the model version and logged with the evaluation run.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robolake.datasets.loader import load
from robolake.models import metrics as M
from robolake.models.architectures import SCENARIO_CLASSES, ModelIO
from robolake.models.config import Evaluation, TrainingConfig
from robolake.storage import Store

Log = Callable[[str], None]
SPEED_BATCHES = 8  # test batches kept in memory for the speed measurements and ONNX check


@dataclass
class EvalReport:
    task: str
    main_metric: str
    samples: int
    metrics: dict[str, float]  # whole split: the task metrics plus naive-predictor references
    corner_cases: dict[str, float]  # samples, failures, failure_rate and task metrics
    per_scenario: dict[str, dict[str, float]]
    speed: dict[str, float]
    onnx: dict[str, float | bool] = field(default_factory=dict)
    device: str = "cpu"  # where the PyTorch predictions and speed figures were taken

    @property
    def main_value(self) -> float:
        return self.metrics[self.main_metric]

    @property
    def corner_case_failure_rate(self) -> float:
        return self.corner_cases.get("failure_rate", math.nan)

    def flat(self) -> dict[str, float]:
        """Every figure as one flat mapping (MLflow metrics, asset metadata)."""
        out = {f"test_{k}": v for k, v in self.metrics.items()}
        out |= {f"corner_case_{k}": v for k, v in self.corner_cases.items()}
        for scenario, values in self.per_scenario.items():
            out |= {f"scenario_{scenario}_{k}": v for k, v in values.items()}
        out |= self.speed
        out |= {k: float(v) for k, v in self.onnx.items()}
        return {k: float(v) for k, v in out.items()}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Predictions:
    outputs: torch.Tensor  # [N, classes] logits or [N, 2]
    labels: torch.Tensor
    scenario: torch.Tensor  # [N] index into SCENARIO_CLASSES
    corner_case_score: torch.Tensor
    kept_inputs: list[list[torch.Tensor]]  # the first batches, for speed and ONNX


def predict(model: nn.Module, lake: Store, dataset: str, version: str, split: str,
            batch_size: int = 256, model_io: ModelIO | None = None,
            device: torch.device | None = None) -> Predictions:
    model_io = model_io or model.io
    device = device or torch.device("cpu")
    model = model.eval().to(device)
    outs, labels, scenarios, scores, kept = [], [], [], [], []
    loader = load(dataset, version, split, lake=lake, batch_size=batch_size, augment=False)
    with torch.no_grad():
        for batch in loader:
            inputs = [batch[name] for name in model_io.inputs]
            outs.append(model(*[t.to(device) for t in inputs]).float().cpu())
            labels.append(batch["label"])
            scenarios.append(batch["scenario"])
            scores.append(batch["corner_case_score"])
            if len(kept) < SPEED_BATCHES:
                kept.append(inputs)
    if not outs:
        raise ValueError(f"dataset {dataset} {version} split {split} is empty: nothing to "
                         f"evaluate")
    return Predictions(torch.cat(outs), torch.cat(labels), torch.cat(scenarios),
                       torch.cat(scores), kept)


def _failures(task: str, outputs: torch.Tensor, labels: torch.Tensor,
              policy: Evaluation) -> torch.Tensor:
    if task == "scenario":
        return outputs.argmax(dim=1) != labels
    err = (outputs - labels.float()).abs()
    tol = policy.regression_tolerance
    return (err[:, 0] > tol.speed_mps) | (err[:, 1] > tol.yaw_rate_radps)


def _task_metrics(task: str, outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    if task == "scenario":
        k = outputs.shape[1]
        conf = torch.bincount(labels * k + outputs.argmax(dim=1), minlength=k * k).view(k, k)
        return M.classification_metrics(conf)
    err = (outputs - labels.float()).double()
    return M.regression_metrics(err.abs().sum(0), (err * err).sum(0), float(len(err)))


def _naive_metrics(task: str, labels: torch.Tensor, classes: int) -> dict[str, float]:
    """What a predictor that ignores its input scores (chance level)."""
    if task == "scenario":
        majority = torch.bincount(labels, minlength=classes).argmax()
        onehot = torch.nn.functional.one_hot(torch.full_like(labels, int(majority)), classes)
        return {f"naive_{k}": v for k, v in _task_metrics(task, onehot.float(), labels).items()}
    mean = labels.float().mean(0, keepdim=True).expand_as(labels)
    out = _task_metrics(task, mean, labels)
    return {f"naive_{k}": out[k] for k in ("mae", "rmse")}


def score(pred: Predictions, model_io: ModelIO, policy: Evaluation) -> EvalReport:
    task = model_io.task
    metric = M.main_metric(task, policy.main_metric)
    failures = _failures(task, pred.outputs, pred.labels, policy)
    metrics = _task_metrics(task, pred.outputs, pred.labels)
    metrics |= _naive_metrics(task, pred.labels, model_io.outputs)
    metrics["failure_rate"] = float(failures.float().mean())

    corner = pred.corner_case_score >= policy.corner_case_threshold
    n_corner = int(corner.sum())
    corner_cases: dict[str, float] = {"samples": float(n_corner)}
    if n_corner:
        corner_cases |= {"failures": float(failures[corner].sum()),
                         "failure_rate": float(failures[corner].float().mean())}
        corner_cases |= _task_metrics(task, pred.outputs[corner], pred.labels[corner])

    per_scenario: dict[str, dict[str, float]] = {}
    for index, name in enumerate(SCENARIO_CLASSES):
        mask = pred.scenario == index
        if not mask.any():
            continue
        values = {"samples": float(mask.sum()),
                  "failure_rate": float(failures[mask].float().mean())}
        sub = _task_metrics(task, pred.outputs[mask], pred.labels[mask])
        values |= {"accuracy": sub["accuracy"]} if task == "scenario" else {"mae": sub["mae"]}
        per_scenario[name] = values
    return EvalReport(task, metric, len(pred.labels), metrics, corner_cases, per_scenario, {})


def measure_speed(model: nn.Module, batches: list[list[torch.Tensor]], *,
                  min_seconds: float = 0.5, latency_runs: int = 50,
                  run: Callable[[list[torch.Tensor]], object] | None = None,
                  prefix: str = "", device: torch.device | None = None) -> dict[str, float]:
    """Batched throughput (samples/s) and single-sample latency (ms, p50/p95) and FPS."""
    if run is None:
        device = device or torch.device("cpu")
        model = model.eval().to(device)
        batches = [[t.to(device) for t in inputs] for inputs in batches]

        def run(inputs):
            with torch.no_grad():
                out = model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out

    for inputs in batches[:2]:  # warm-up
        run(inputs)
    samples, start = 0, time.perf_counter()
    while True:
        for inputs in batches:
            run(inputs)
            samples += inputs[0].shape[0]
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    single = [t[:1] for t in batches[0]]
    for _ in range(5):
        run(single)
    times = []
    for _ in range(latency_runs):
        t0 = time.perf_counter()
        run(single)
        times.append((time.perf_counter() - t0) * 1000)
    p50 = float(np.percentile(times, 50))
    return {f"{prefix}samples_per_s": samples / elapsed, f"{prefix}latency_ms_p50": p50,
            f"{prefix}latency_ms_p95": float(np.percentile(times, 95)),
            f"{prefix}fps": 1000.0 / p50 if p50 else math.inf}


def evaluate_model(model: nn.Module, lake: Store, config: TrainingConfig, *,
                   split: str | None = None, onnx_path: str | Path | None = None,
                   measure: bool = True) -> EvalReport:
    """Score a model on the config's test split (task, per scenario, corner cases, speed)."""
    from robolake.models import export

    model_io: ModelIO = model.io
    policy = config.evaluation
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    pred = predict(model, lake, config.dataset.name, config.dataset.version,
                   split or config.dataset.splits.test, policy.batch_size, model_io, device)
    report = score(pred, model_io, policy)
    report.device = device.type
    if measure:
        report.speed = measure_speed(model, pred.kept_inputs, device=device)
    model.cpu()  # ONNX Runtime runs on the CPU here: compare with PyTorch on the CPU
    if onnx_path is not None:
        check = export.check_onnx(model, onnx_path, pred.kept_inputs, policy.onnx_atol,
                                  policy.onnx_rtol, model_io)
        report.onnx = check.as_dict()
        if measure:
            session = export.onnx_session(onnx_path)
            report.speed |= measure_speed(
                model, pred.kept_inputs, prefix="onnx_",
                run=lambda inputs: export.run_onnx(session, model_io, inputs))
    return report


# --------------------------------------------------------------------------- promotion

@dataclass
class PromotionDecision:
    promote: bool
    reasons: list[str]
    main_metric: str
    candidate: float
    baseline: float | None = None
    baseline_version: str | None = None
    improvement: float | None = None  # relative, positive is better
    corner_case_failure_rate: float | None = None
    kept: bool = False  # the candidate already is the production model

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "kept" if self.kept else "refused"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def relative_improvement(metric: str, candidate: float, baseline: float) -> float:
    gain = candidate - baseline if M.HIGHER_IS_BETTER[metric] else baseline - candidate
    if baseline == 0:
        return math.inf if gain > 0 else 0.0
    return gain / abs(baseline)


def decide_promotion(candidate: EvalReport, baseline: EvalReport | None, policy: Evaluation,
                     baseline_version: str | None = None) -> PromotionDecision:
    reasons: list[str] = []
    ok = True
    metric = candidate.main_metric
    rate = candidate.corner_case_failure_rate
    n_corner = int(candidate.corner_cases.get("samples", 0))
    limit = policy.max_corner_case_failure_rate
    if n_corner == 0:
        if policy.require_corner_cases:
            ok = False
            reasons.append("no corner cases (corner_case_score >= "
                           f"{policy.corner_case_threshold:g}) in the test split: robustness "
                           "cannot be checked")
        else:
            reasons.append("no corner cases in the test split (not required)")
    elif rate < limit:
        reasons.append(f"corner-case failure rate {rate:.1%} < {limit:.1%} limit "
                       f"({n_corner} corner cases)")
    else:
        ok = False
        reasons.append(f"corner-case failure rate {rate:.1%} >= {limit:.1%} limit "
                       f"({int(candidate.corner_cases['failures'])} of {n_corner} corner cases "
                       f"failed)")

    value = candidate.main_value
    decision = PromotionDecision(False, reasons, metric, value, corner_case_failure_rate=rate)
    if baseline is None:
        reasons.append(f"no production model yet: {metric} {value:.4g} is not compared")
    else:
        base = baseline.main_value
        gain = relative_improvement(metric, value, base)
        decision.baseline, decision.baseline_version, decision.improvement = (
            base, baseline_version, gain)
        text = (f"{metric} {value:.4g} vs production v{baseline_version} {base:.4g}: "
                f"{gain:+.1%} {'>=' if gain >= policy.margin else '<'} "
                f"+{policy.margin:.1%} margin")
        if math.isnan(value) or gain < policy.margin:
            ok = False
        reasons.append(text)
    decision.promote = ok
    return decision


# --------------------------------------------------------------------------- with MLflow

def onnx_key(model_name: str, version: str) -> str:
    return f"models/{model_name}/versions/{version}/model.onnx"


def evaluate_and_promote(lake: Store, config: TrainingConfig, version: str | None = None, *,
                         log: Log = print, measure: bool = True) -> dict:
    """Evaluate a registered version (default: the newest) against production; promote it
    (alias `production`) when `decide_promotion` says so. Returns a summary for metadata."""
    from robolake.models import tracking

    client = tracking.configure(lake)
    name = config.name
    version = version or tracking.latest_version(client, name)
    if version is None:
        raise LookupError(f"no registered version of model {name} to evaluate: train it first")
    candidate_model = tracking.load_model_version(name, version)
    with tempfile.TemporaryDirectory(prefix="robolake-eval-") as tmp:
        onnx_path = None
        if lake.exists(onnx_key(name, version)):
            onnx_path = Path(tmp) / "model.onnx"
            onnx_path.write_bytes(lake.read_bytes(onnx_key(name, version)))
        report = evaluate_model(candidate_model, lake, config, onnx_path=onnx_path,
                                measure=measure)
    rate = report.corner_case_failure_rate
    log(f"{name} v{version}: {report.main_metric} {report.main_value:.4g} on "
        f"{report.samples} test samples, corner-case failure rate "
        f"{'n/a (no corner cases)' if math.isnan(rate) else f'{rate:.1%}'}")

    decision, baseline_version = _decide_against_production(client, lake, config, version,
                                                            candidate_model, report)
    if report.onnx and not report.onnx.get("onnx_matches", True):
        decision.reasons.append(f"note: ONNX export differs from PyTorch by up to "
                                f"{report.onnx['onnx_max_abs_diff']:.3g}")

    run_id = _log_evaluation(client, lake, config, version, report, decision)
    if decision.promote:
        client.set_registered_model_alias(name, tracking.PRODUCTION_ALIAS, version)
        from robolake.governance import audit

        audit.record(lake, "promote", f"models/{name}", version=int(version),
                     details={"alias": tracking.PRODUCTION_ALIAS, "previous": baseline_version,
                              "evaluation_run_id": run_id, "reasons": decision.reasons})
    if not decision.kept:  # the version keeps the tags of the evaluation that promoted it
        verdict_tags = {"robolake.promotion": decision.verdict,
                        "robolake.promotion_reasons": "; ".join(decision.reasons),
                        "robolake.evaluation_run_id": run_id,
                        f"robolake.{report.main_metric}": f"{report.main_value:.6g}",
                        "robolake.corner_case_failure_rate": f"{rate:.6g}"}
        for key, value in verdict_tags.items():
            client.set_model_version_tag(name, version, key, value)
    log(f"{name} v{version} {decision.verdict}: " + "; ".join(decision.reasons))
    return {"model": name, "version": version, "decision": decision.to_dict(),
            "report": report.to_dict(), "evaluation_run_id": run_id,
            "production_version": version if decision.promote else baseline_version,
            "tracking_uri": tracking.tracking_uri(lake), "ui": tracking.ui_command(lake)}


def _decide_against_production(client, lake: Store, config: TrainingConfig, version: str,
                               candidate_model, report: EvalReport
                               ) -> tuple[PromotionDecision, str | None]:
    """The promotion decision for `version`, with the production version it was compared
    with (None when there is none)."""
    from robolake.models import tracking

    name = config.name
    current = tracking.production_version(client, name)
    if current is not None and str(current.version) == str(version):
        return PromotionDecision(False, [f"v{version} is already the production model"],
                                 report.main_metric, report.main_value, kept=True,
                                 corner_case_failure_rate=report.corner_case_failure_rate), None
    baseline = baseline_version = None
    unusable = None
    if current is not None:
        baseline_version = str(current.version)
        try:
            baseline_model = tracking.load_model_version(name, baseline_version)
            if baseline_model.io.task != candidate_model.io.task:
                raise ValueError(f"it predicts {baseline_model.io.task}, the candidate "
                                 f"{candidate_model.io.task}")
            baseline = evaluate_model(baseline_model, lake, config, measure=False)
        except Exception as exc:  # an unusable baseline must not promote blindly
            unusable = (f"production v{baseline_version} cannot be evaluated on this test "
                        f"split: {exc}")
    decision = decide_promotion(report, baseline, config.evaluation, baseline_version)
    if unusable:
        decision.promote = False
        decision.reasons.append(unusable)
    return decision, baseline_version


def _log_evaluation(client, lake: Store, config: TrainingConfig, version: str,
                    report: EvalReport, decision: PromotionDecision) -> str:
    from mlflow.entities import Metric, Param, RunTag

    from robolake.models import tracking

    exp = tracking.ensure_experiment(client, lake, tracking.experiment_name(config.name))
    run = client.create_run(exp, run_name=f"evaluate-{config.name}-v{version}", tags={
        "robolake.kind": "evaluation", "robolake.model_version": version,
        "robolake.promotion": decision.verdict,
        "robolake.promotion_reasons": "; ".join(decision.reasons),
        "dataset.name": config.dataset.name, "dataset.version": config.dataset.version,
        "code.version": tracking.code_version()})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in report.flat().items() if math.isfinite(v)]
    params = [Param("model_version", version), Param("main_metric", report.main_metric),
              Param("margin", str(config.evaluation.margin)),
              Param("max_corner_case_failure_rate",
                    str(config.evaluation.max_corner_case_failure_rate))]
    client.log_batch(run_id, metrics=metrics, params=params,
                     tags=[RunTag("robolake.baseline_version", decision.baseline_version or "")])
    client.log_dict(run_id, {"report": report.to_dict(), "decision": decision.to_dict()},
                    "evaluation.json")
    client.set_terminated(run_id)
    return run_id


def summary_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)
