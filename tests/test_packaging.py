"""What the project installs: every package folder, under unambiguous top-level names."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed():
    folders = {SETUPTOOLS["package-dir"].get(p, p.replace(".", "/"))
               for p in SETUPTOOLS["packages"]}
    on_disk = {init.parent.relative_to(REPO).as_posix()
               for top in ("robolake", "robolake_assets", "partitions", "resources", "sensors")
               for init in (REPO / top).rglob("__init__.py")}
    assert folders == on_disk


def test_card_folders_install_with_a_robolake_prefix():
    assert SETUPTOOLS["package-dir"] == {"robolake_partitions": "partitions",
                                         "robolake_resources": "resources",
                                         "robolake_sensors": "sensors"}
    for name, folder in SETUPTOOLS["package-dir"].items():
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).parent == REPO / folder
    assert all(p.startswith("robolake") for p in SETUPTOOLS["packages"])
