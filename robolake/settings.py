"""Where things live, chosen in one place.

Laptop defaults (folders under the working directory) apply when a variable is
unset; production sets the same variables to S3 prefixes and a PostgreSQL
instance. Dagster resources read these through `dagster.EnvVar`, so the
defaults are written into the environment before definitions load.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

PROJECT_INSTANCE_CONFIG = Path(__file__).resolve().parents[1] / "dagster.yaml"
DEFAULTS = {
    "ROBOLAKE_LANDING": "landing",
    "ROBOLAKE_LAKE": "lake",
    "ROBOLAKE_SPECS": "specs",  # dataset specs: each YAML file becomes a dataset asset
    # training configs: each YAML file becomes a training and an evaluation asset
    "ROBOLAKE_TRAINING_CONFIGS": "configs/training",
}


def ensure_env_defaults(base: Path | None = None) -> dict[str, str]:
    """Fill unset ROBOLAKE_* variables with folders under `base` (default: cwd)."""
    base = base or Path.cwd()
    for name, folder in DEFAULTS.items():
        if not os.environ.get(name):
            os.environ[name] = str(base / folder)
    return {name: os.environ[name] for name in DEFAULTS}


def ensure_dagster_home(base: Path | None = None) -> Path:
    """DAGSTER_HOME (default ./.dagster_home), seeded with the project's dagster.yaml."""
    base = base or Path.cwd()
    home = Path(os.environ.get("DAGSTER_HOME") or base / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        if PROJECT_INSTANCE_CONFIG.exists():
            shutil.copyfile(PROJECT_INSTANCE_CONFIG, config)
        else:  # installed without the repository's files
            config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
