"""Train, register, export and evaluate: the steps the assets and the CLI call.

- `train_model`: train (resuming from the lake's checkpoints), log to MLflow,
  register the model with its lineage and put its ONNX export beside it (in the
  training run's artifacts and at `models/<name>/versions/<v>/model.onnx` in the
  lake). With more than one process (`distributed.nproc_per_node` x `nnodes`) it runs
  itself under `torchrun` on this node: a multi-node config keeps its world size here.
- `evaluate_and_promote` (robolake.models.evaluate): the promotion gate.
- `train_and_evaluate`: both, for `robolake ingest --through models` and the demo.

Re-running an unchanged config is a no-op: when the run key's checkpoints say
training finished and the registry holds the version registered from that
final checkpoint by the same (clean, committed) code, `train_model` returns
that version instead of training and registering an identical one again
(`retrain=True` forces a new run). Uncommitted code always retrains.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from robolake.models.config import TrainingConfig, load_config
from robolake.models.train import (
    CheckpointStore,
    checkpoint_prefix,
    default_run_key,
    dist_env,
    launched_by_torchrun,
    train,
)
from robolake.storage import Store, open_store

Log = Callable[[str], None]


def resolve_lake(lake: Store | str | Path | None) -> Store:
    if lake is None:
        from robolake.datasets.loader import default_lake

        return default_lake()
    if isinstance(lake, (str, Path)):
        return open_store(lake)
    return lake


def _config(config: TrainingConfig | str | Path) -> TrainingConfig:
    return config if isinstance(config, TrainingConfig) else load_config(config)


def train_in_process(lake: Store | str | Path | None, config: TrainingConfig | str | Path, *,
                     run_key: str | None = None, resume: bool = True, register: bool = True,
                     track: bool = True, stop_after_steps: int | None = None,
                     log: Log = print) -> dict:
    """Train in this process (one rank when under torchrun); rank 0 registers the model."""
    lake = resolve_lake(lake)
    config = _config(config)
    result = train(config, lake, run_key=run_key, resume=resume,
                   stop_after_steps=stop_after_steps, track=track, log=log)
    summary = {"model": config.name, **result.summary(),
               "dataset": {"name": config.dataset.name, "version": config.dataset.version,
                           "spec_hash": result.manifest.get("spec_hash")}}
    tracker = result.tracker
    if not (result.finished and result.rank == 0 and track):
        return summary
    from robolake.models import export, tracking  # mlflow, onnx: only where they are used
    from robolake.models.evaluate import onnx_key

    summary |= {"tracking_uri": tracking.tracking_uri(lake), "ui": tracking.ui_command(lake)}
    if not register:
        tracker.end("FINISHED")
        return summary
    version = tracking.register_model(
        tracker, result.model, config, result.manifest, result.run_key,
        extra_tags={"robolake.weights_sha256": result.weights_sha256,
                    "robolake.global_step": str(result.global_step),
                    "robolake.checkpoint": result.checkpoint_key or ""})
    with tempfile.TemporaryDirectory(prefix="robolake-onnx-") as tmp:
        path = export.export_onnx(result.model, Path(tmp) / "model.onnx", result.io)
        check = export.check_onnx(result.model, path, atol=config.evaluation.onnx_atol,
                                  rtol=config.evaluation.onnx_rtol, model_io=result.io)
        lake.put_file(path, onnx_key(config.name, version))
        tracker.client.log_artifact(tracker.run_id, str(path), "onnx")
    tracker.client.set_model_version_tag(config.name, version, "robolake.onnx",
                                         onnx_key(config.name, version))
    tracker.log_metrics({"onnx_max_abs_diff": check.max_abs_diff}, result.global_step)
    tracker.end("FINISHED")
    log(f"registered {config.name} v{version} (run {tracker.run_id}); ONNX at "
        f"{onnx_key(config.name, version)} (max |ONNX - PyTorch| {check.max_abs_diff:.2g})")
    summary |= {"version": version, "onnx_key": onnx_key(config.name, version),
                **check.as_dict()}
    return summary


def launch_torchrun(lake: Store | str | Path | None, config_path: str | Path, nproc: int, *,
                    run_key: str | None = None, extra_args: list[str] | None = None,
                    log: Log = print, timeout: float | None = None) -> list[dict]:
    """Run `python -m robolake.models.torchrun_entry` under torchrun with `nproc` processes
    on this node; returns every rank's summary (rank order)."""
    lake = resolve_lake(lake)
    with tempfile.TemporaryDirectory(prefix="robolake-torchrun-") as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "robolake.models.torchrun_entry",
               "--config", str(config_path), "--lake", lake.uri,
               "--result-json", f"{tmp}/rank-{{rank}}.json", *(extra_args or [])]
        if run_key:
            cmd += ["--run-key", run_key]
        env = {**os.environ, "ROBOLAKE_LAKE": lake.uri}
        if not env.get("OMP_NUM_THREADS"):
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            log(line)
        code = proc.wait(timeout=timeout)
        if code != 0:
            raise RuntimeError(f"torchrun ({nproc} processes) failed with exit code {code}:\n"
                               + "\n".join(tail))
        return [json.loads(Path(tmp, f"rank-{r}.json").read_text()) for r in range(nproc)]


def registered_run(lake: Store, config: TrainingConfig, run_key: str) -> dict | None:
    """The summary of a finished run of this run key whose final checkpoint is registered
    by the current clean code, or None (see the module docstring)."""
    from robolake.models import tracking
    from robolake.models.evaluate import onnx_key

    ckpts = CheckpointStore(lake, checkpoint_prefix(config.name, run_key))
    pointer = ckpts.latest_pointer()
    code = tracking.code_version()
    if not (pointer and pointer.get("finished")) or code.endswith("-dirty") or code == "unknown":
        return None
    client = tracking.configure(lake)
    versions = client.search_model_versions(f"name = '{config.name}'")
    wanted = (run_key, config.config_hash, code, pointer["key"])
    for v in sorted(versions, key=lambda v: -int(v.version)):
        tags = v.tags
        if (tags.get("robolake.run_key"), tags.get("robolake.config_hash"),
                tags.get("code.version"), tags.get("robolake.checkpoint")) != wanted:
            continue
        state = ckpts.load(pointer)
        if "summary" not in state:
            return None
        version = str(v.version)
        return {"model": config.name, **state["summary"], "checkpoint_key": pointer["key"],
                "version": version, "reused": True, "onnx_key": onnx_key(config.name, version),
                "dataset": {"name": config.dataset.name, "version": config.dataset.version,
                            "spec_hash": tags.get("dataset.spec_hash")},
                "tracking_uri": tracking.tracking_uri(lake), "ui": tracking.ui_command(lake)}
    return None


def local_processes(config: TrainingConfig) -> int:
    """Processes a run on this node starts: `nnodes x nproc_per_node`. A multi-node config
    keeps its world size (so its batch, learning rate and run key) and runs every process
    here (torchrun --nnodes=1); only the k8s training asset spreads it over nodes."""
    return config.distributed.world_size


def train_model(lake: Store | str | Path | None, config: TrainingConfig | str | Path, *,
                run_key: str | None = None, retrain: bool = False, log: Log = print) -> dict:
    """Train, register and export a model; DDP under torchrun when the config asks for
    more than one process (and this process was not started by torchrun itself). An
    unchanged config already trained and registered by this code is not trained again
    unless `retrain`."""
    lake = resolve_lake(lake)
    cfg = _config(config)
    nproc = local_processes(cfg)
    spawn = nproc > 1 and not launched_by_torchrun()
    if spawn and cfg.distributed.nnodes > 1:
        log(f"{cfg.name}: distributed.nnodes={cfg.distributed.nnodes} x nproc_per_node="
            f"{cfg.distributed.nproc_per_node}: running all {nproc} processes on this node "
            "(torchrun --nnodes=1); on Kubernetes the training asset submits a PyTorchJob")
    if not retrain:
        key = run_key or default_run_key(cfg, nproc if spawn else dist_env().world_size)
        reused = registered_run(lake, cfg, key)
        if reused is not None:
            log(f"{cfg.name}: unchanged config, dataset and code; v{reused['version']} was "
                f"trained from {reused['checkpoint_key']} (retrain to train again)")
            return reused
    if spawn:
        with tempfile.TemporaryDirectory(prefix="robolake-config-") as tmp:
            path = config if isinstance(config, (str, Path)) else Path(tmp) / "config.json"
            if not isinstance(config, (str, Path)):
                Path(path).write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
            ranks = launch_torchrun(lake, path, nproc, run_key=run_key, log=log)
        hashes = {r["weights_sha256"] for r in ranks}
        if len(hashes) != 1:
            raise RuntimeError(f"DDP ranks disagree on the final weights: {sorted(hashes)}")
        return ranks[0]
    return train_in_process(lake, cfg, run_key=run_key, log=log)


def evaluate_and_promote(lake: Store | str | Path | None, config: TrainingConfig | str | Path,
                         version: str | None = None, *, log: Log = print) -> dict:
    from robolake.models import evaluate

    return evaluate.evaluate_and_promote(resolve_lake(lake), _config(config), version, log=log)


def train_and_evaluate(lake: Store | str | Path | None, config_path: TrainingConfig | str | Path,
                       log: Log = print, retrain: bool = False) -> dict:
    """Train, register, export, evaluate and (maybe) promote one config; for the CLI.

    Returns {"training": ..., "evaluation": ..., "ui": "<command to see it>"}.
    """
    lake = resolve_lake(lake)
    config = _config(config_path)
    training = train_model(lake, config_path, retrain=retrain, log=log)
    evaluation = evaluate_and_promote(lake, config, training.get("version"), log=log)
    ui = evaluation["ui"]
    log(f"see the runs and models: {ui}")
    return {"training": training, "evaluation": evaluation, "ui": ui}
