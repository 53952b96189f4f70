"""Models: training configs, architectures, training, tracking, evaluation, export.

Entry points (imported lazily; this package never imports dagster):
- `train_and_evaluate(lake, config_path, log=print) -> dict` (CLI, demo)
- `train_model(lake, config, ...)`, `evaluate_and_promote(lake, config, version)` (assets)
- `python -m robolake.models.torchrun_entry --config X` (one training process, also a
  rank under `torchrun`)
"""

_PIPELINE = ("train_and_evaluate", "train_model", "evaluate_and_promote", "train_in_process",
             "launch_torchrun")


def __getattr__(name: str):
    if name in _PIPELINE:
        from robolake.models import pipeline

        return getattr(pipeline, name)
    if name in ("load_config", "parse_config", "TrainingConfig", "ConfigError"):
        from robolake.models import config

        return getattr(config, name)
    raise AttributeError(name)
