"""Settings: read once from the environment, laptop defaults, no import-time side effects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from robolake.settings import Settings, get_settings, reset_settings
from robolake_resources.lake import resource_value

REPO = Path(__file__).resolve().parents[1]


def test_laptop_defaults_are_folders_under_the_working_directory(tmp_path: Path):
    s = Settings.from_env({}, base=tmp_path)
    assert s.lake == str(tmp_path / "lake")
    assert s.landing == str(tmp_path / "landing")
    assert s.specs_dir == tmp_path / "specs"
    assert s.training_configs_dir == tmp_path / "configs" / "training"
    assert s.notebooks_dir == tmp_path / "notebooks"
    assert s.dagster_home == (tmp_path / ".dagster_home").resolve()
    assert (s.partitions_start, s.deployment, s.engine, s.decode_workers) == (
        "2015-01-01", "local", "auto", None)
    assert (s.spark_min_bytes, s.spark_master) == (4 * 1024**3, "local[*,4]")
    assert s.env_fields == frozenset()


def test_values_from_the_environment_are_checked(tmp_path: Path):
    env = {"ROBOLAKE_LAKE": "s3://bucket/lake", "ROBOLAKE_DEPLOYMENT": "K8S",
           "ROBOLAKE_DECODE_WORKERS": "3", "ROBOLAKE_PARTITIONS_START": "2024-02-01",
           "ROBOLAKE_SPECS": str(tmp_path / "s")}
    s = Settings.from_env(env, base=tmp_path)
    assert (s.lake, s.deployment, s.decode_workers, s.partitions_start, s.specs_dir) == (
        "s3://bucket/lake", "k8s", 3, "2024-02-01", tmp_path / "s")
    assert s.env_fields == {"lake", "deployment", "decode_workers", "partitions_start",
                          "specs_dir"}
    for var, value, expected in [
        ("ROBOLAKE_DEPLOYMENT", "kubernetes", "expected 'local' or 'k8s'"),
        ("ROBOLAKE_ENGINE", "ray", "expected 'local' or 'spark' or 'auto'"),
        ("ROBOLAKE_SPARK_MIN_BYTES", "4G", "expected a whole number of bytes"),
        ("ROBOLAKE_DECODE_WORKERS", "many", "expected a whole number"),
        ("ROBOLAKE_PARTITIONS_START", "2024/02/01", "expected a date YYYY-MM-DD"),
    ]:
        with pytest.raises(ValueError, match=f"{var}=.*{expected}"):
            Settings.from_env({var: value})


def test_resources_read_set_variables_through_envvar_and_defaults_otherwise(tmp_path: Path):
    s = Settings.from_env({"ROBOLAKE_LAKE": "s3://b/lake"}, base=tmp_path)
    assert resource_value(s, "lake") == dg.EnvVar("ROBOLAKE_LAKE")
    assert resource_value(s, "landing") == str(tmp_path / "landing")
    # a CLI flag replaces the variable: the resource takes the flag's value
    flagged = s.replace(lake="/data/lake", landing=None)
    assert resource_value(flagged, "lake") == "/data/lake"
    assert flagged.landing == s.landing and flagged.env_fields == frozenset()


def test_settings_are_read_once(monkeypatch):
    monkeypatch.setenv("ROBOLAKE_LAKE", "/first")
    first = get_settings()
    monkeypatch.setenv("ROBOLAKE_LAKE", "/second")
    assert get_settings() is first and first.lake == "/first"
    reset_settings()
    assert get_settings().lake == "/second"


def test_loading_the_code_location_writes_no_environment(tmp_path: Path):
    """With no ROBOLAKE_* variable set, the definitions load, resolve their resources to the
    laptop defaults, and leave the environment as it was."""
    code = (
        "import os\n"
        "def ours():\n"
        "    return {k: v for k, v in os.environ.items()\n"
        "            if k.startswith(('ROBOLAKE_', 'DAGSTER_', 'MLFLOW_TRACKING'))}\n"
        "before = ours()\n"
        "from robolake_assets.definitions import defs\n"
        "assert ours() == before, ours()\n"
        "print(defs.resources['lake'].root, defs.resources['landing'].uri)\n"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ROBOLAKE_") and k != "DAGSTER_HOME"}
    # the definitions read specs and training configs from the working directory's folders
    for folder in ("specs", "configs"):
        (tmp_path / folder).symlink_to(REPO / folder)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "lake"), str(tmp_path / "landing")]
