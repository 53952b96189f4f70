"""Where things live and how Robolake runs: one `Settings` object, read once.

Every value comes from an environment variable (table below); an unset one
takes its laptop default (folders under the working directory, the embedded
deployment). Production sets the same variables to S3 prefixes and
`ROBOLAKE_DEPLOYMENT=k8s`. Nothing here writes the environment: a caller that
needs a value asks `get_settings()`; `env_fields` says which values the
environment gave (Dagster resources read those through the variable:
`robolake_resources.lake.resource_value`).

| field | variable | default |
|---|---|---|
| lake | ROBOLAKE_LAKE | ./lake |
| landing | ROBOLAKE_LANDING | ./landing |
| specs_dir | ROBOLAKE_SPECS | ./specs |
| training_configs_dir | ROBOLAKE_TRAINING_CONFIGS | ./configs/training |
| notebooks_dir | ROBOLAKE_NOTEBOOKS | ./notebooks |
| partitions_start | ROBOLAKE_PARTITIONS_START | 2015-01-01 |
| deployment | ROBOLAKE_DEPLOYMENT | local (or k8s) |
| decode_workers | ROBOLAKE_DECODE_WORKERS | unset: usable CPUs up to 4 |
| engine | ROBOLAKE_ENGINE | auto (local, spark or auto) |
| spark_min_bytes | ROBOLAKE_SPARK_MIN_BYTES | 4 GiB: `auto` runs a partition on Spark above it |
| spark_master | ROBOLAKE_SPARK_MASTER | local[*,4] (4 attempts per task); k8s://… in production |
| spark_image | ROBOLAKE_SPARK_IMAGE | unset; on k8s://, the executors' image |
| cache_dir | ROBOLAKE_CACHE | ~/.cache/robolake |
| dagster_home | DAGSTER_HOME | ./.dagster_home |
| freshness_max_lag_s | ROBOLAKE_FRESHNESS_MAX_LAG_S | 3600 (s): cleaned vs landing SLA |
| camera_brightness | ROBOLAKE_CAMERA_BRIGHTNESS | off: camera frames' brightness left null |
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

PROJECT_INSTANCE_CONFIG = Path(__file__).resolve().parents[1] / "dagster.yaml"

# field -> environment variable
ENV_VARS = {
    "lake": "ROBOLAKE_LAKE",
    "landing": "ROBOLAKE_LANDING",
    "specs_dir": "ROBOLAKE_SPECS",
    "training_configs_dir": "ROBOLAKE_TRAINING_CONFIGS",
    "notebooks_dir": "ROBOLAKE_NOTEBOOKS",
    "partitions_start": "ROBOLAKE_PARTITIONS_START",
    "deployment": "ROBOLAKE_DEPLOYMENT",
    "decode_workers": "ROBOLAKE_DECODE_WORKERS",
    "engine": "ROBOLAKE_ENGINE",
    "spark_min_bytes": "ROBOLAKE_SPARK_MIN_BYTES",
    "spark_master": "ROBOLAKE_SPARK_MASTER",
    "spark_image": "ROBOLAKE_SPARK_IMAGE",
    "cache_dir": "ROBOLAKE_CACHE",
    "dagster_home": "DAGSTER_HOME",
    "freshness_max_lag_s": "ROBOLAKE_FRESHNESS_MAX_LAG_S",
    "camera_brightness": "ROBOLAKE_CAMERA_BRIGHTNESS",
}
DEPLOYMENTS = ("local", "k8s")  # embedded on a laptop | Kubernetes (k8s_job_executor)
# local: robolake/ functions in-process; spark: the same functions in Spark tasks
# (robolake/spark_engine.py); auto: Spark for a partition whose uploads exceed spark_min_bytes
ENGINES = ("local", "spark", "auto")
# Spark's start-up (~10 s) and per-task cost pay off only past a few GB per partition
# (about 21 s/GB per core locally): the demo's partitions (tens of MB) stay local
DEFAULT_SPARK_MIN_BYTES = 4 * 1024**3
# local mode gives a task one attempt unless the master says more: 4, as spark.task.maxFailures
DEFAULT_SPARK_MASTER = "local[*,4]"
DEFAULT_FRESHNESS_MAX_LAG_S = 3600.0  # the cleaned layer at most 1 h behind the landing zone
DEFAULT_PARTITIONS_START = "2015-01-01"  # real recordings in the tests date from 2015


@dataclass(frozen=True)
class Settings:
    lake: str  # a folder or s3://bucket/prefix
    landing: str  # a folder or s3://bucket/prefix; never modified
    specs_dir: Path  # dataset specs: each YAML file is a dataset asset
    training_configs_dir: Path  # each YAML file is a training and an evaluation asset
    notebooks_dir: Path  # each notebook is an asset; schedules.yaml schedules some
    partitions_start: str  # first date of the daily partitions, YYYY-MM-DD
    deployment: str  # one of DEPLOYMENTS
    decode_workers: int | None  # the local engine's processes; None: usable CPUs up to 4
    engine: str  # one of ENGINES
    spark_min_bytes: int  # auto engine: Spark above this many bytes of uploads to decode
    spark_master: str  # the Spark engine's master URL (local[N,F] or k8s://…)
    spark_image: str  # executors' container image on Kubernetes ("" when unset)
    cache_dir: Path  # local copies of shards when the lake is on S3
    dagster_home: Path
    # fields whose value came from the environment (the rest are defaults or overrides)
    env_fields: frozenset[str] = field(default=frozenset(), compare=False)
    freshness_max_lag_s: float = DEFAULT_FRESHNESS_MAX_LAG_S  # cleaned vs landing SLA
    # decode every camera frame for its brightness (off: the black flag from the first bright
    # block where one shows it, robolake/jpegdc.py, and brightness null)
    camera_brightness: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 base: Path | None = None) -> Settings:
        """Settings from `environ` (default: os.environ); defaults are folders under `base`
        (default: the working directory). A bad value raises ValueError naming the variable."""
        env = os.environ if environ is None else environ
        base = base or Path.cwd()
        given = {name: env[var].strip() for name, var in ENV_VARS.items()
                 if env.get(var, "").strip()}

        def path(name: str, default: Path) -> Path:
            return Path(given[name]).expanduser() if name in given else default

        return cls(
            lake=given.get("lake", str(base / "lake")),
            landing=given.get("landing", str(base / "landing")),
            specs_dir=path("specs_dir", base / "specs"),
            training_configs_dir=path("training_configs_dir", base / "configs" / "training"),
            notebooks_dir=path("notebooks_dir", base / "notebooks"),
            partitions_start=_date(given.get("partitions_start", DEFAULT_PARTITIONS_START)),
            deployment=_choice("deployment", given.get("deployment", "local"), DEPLOYMENTS),
            decode_workers=_workers(given.get("decode_workers")),
            engine=_choice("engine", given.get("engine", "auto"), ENGINES),
            spark_min_bytes=_bytes(given.get("spark_min_bytes")),
            spark_master=given.get("spark_master", DEFAULT_SPARK_MASTER),
            spark_image=given.get("spark_image", ""),
            cache_dir=path("cache_dir", Path.home() / ".cache" / "robolake"),
            dagster_home=path("dagster_home", base / ".dagster_home").resolve(),
            env_fields=frozenset(given),
            freshness_max_lag_s=_max_lag(given.get("freshness_max_lag_s")),
            camera_brightness=_switch("camera_brightness", given.get("camera_brightness")),
        )

    def replace(self, **overrides) -> Settings:
        """A copy with some fields set (e.g. CLI flags); None leaves a field as it is."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **overrides, env_fields=self.env_fields - set(overrides))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    value = value.lower()
    if value not in allowed:
        expected = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"{ENV_VARS[name]}={value!r}: expected {expected}")
    return value


def _date(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"{ENV_VARS['partitions_start']}={value!r}: expected a date "
                         "YYYY-MM-DD") from None


def _max_lag(value: str | None) -> float:
    if value is None:
        return DEFAULT_FRESHNESS_MAX_LAG_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{ENV_VARS['freshness_max_lag_s']}={value!r}: expected a positive "
                         "number of seconds, e.g. 3600")
    return seconds


def _switch(name: str, value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{ENV_VARS[name]}={value!r}: expected on or off (1/0, true/false)")


def _workers(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(f"{ENV_VARS['decode_workers']}={value!r}: expected a whole number "
                         "of processes") from None


def _bytes(value: str | None) -> int:
    if value is None:
        return DEFAULT_SPARK_MIN_BYTES
    try:
        return max(0, int(value))
    except ValueError:
        raise ValueError(f"{ENV_VARS['spark_min_bytes']}={value!r}: expected a whole number "
                         "of bytes") from None


_settings: Settings | None = None


def get_settings() -> Settings:
    """This process's settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def use_settings(settings: Settings) -> None:
    """Make `settings` this process's (the CLI, with its flags applied, before it loads the
    definitions: the daily partitions start at the first date of *its* lake)."""
    global _settings
    _settings = settings


def reset_settings() -> None:
    """Forget the settings read: the next get_settings() reads the environment again (tests
    that change the environment between cases)."""
    global _settings
    _settings = None


def ensure_dagster_home(settings: Settings | None = None) -> Path:
    """Create the Dagster instance folder, seeded with the project's dagster.yaml, and point
    DAGSTER_HOME at it (Dagster finds its instance only through that variable). Called by
    the CLI before it opens the instance; never at import."""
    home = (settings or get_settings()).dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        if PROJECT_INSTANCE_CONFIG.exists():
            shutil.copyfile(PROJECT_INSTANCE_CONFIG, config)
        else:  # installed without the repository's files
            config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
