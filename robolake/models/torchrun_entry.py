"""One training process: `python -m robolake.models.torchrun_entry --config X`, also one rank
under `torchrun` (what `pipeline.launch_torchrun` starts). It trains in this process and,
on rank 0, registers the model and its ONNX export in MLflow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robolake.models.config import parse_config
from robolake.models.pipeline import resolve_lake, train_in_process
from robolake.models.train import dist_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m robolake.models.torchrun_entry",
                                     description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="training config YAML")
    source.add_argument("--config-json", help="the training config itself, as JSON (the "
                                              "pods of a PyTorchJob have no config file)")
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
    parser.add_argument("--result-key", help="rank 0 writes its summary to this lake key "
                                             "(what the training asset reads back)")
    args = parser.parse_args(argv)
    config = args.config or parse_config(json.loads(args.config_json), "--config-json")

    env = dist_env()
    summary = train_in_process(
        args.lake, config, run_key=args.run_key, resume=not args.no_resume,
        register=not (args.no_register or args.no_mlflow), track=not args.no_mlflow,
        stop_after_steps=args.stop_after_steps,
        log=(lambda m: print(m, flush=True)) if env.is_main else (lambda m: None))
    if args.result_json:
        path = Path(args.result_json.replace("{rank}", str(env.rank)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, default=str))
    if args.result_key and env.is_main:
        resolve_lake(args.lake).write_bytes(args.result_key,
                                            json.dumps(summary, default=str).encode())
    if env.is_main:
        print(json.dumps({k: summary.get(k) for k in ("model", "version", "global_step",
                                                       "weights_sha256", "run_id")},
                         default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
