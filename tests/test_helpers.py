"""Shared Dagster helpers, and the rule that no asset module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from robolake.cleaned import TABLES
from robolake_assets.helpers import CLEANED_ASSET_KINDS, cleaned_asset_of_table, markdown_table

ASSETS = Path(__file__).resolve().parents[1] / "robolake_assets"
# modules that assemble the code location or drive it may import the layers
ASSEMBLERS = {"definitions.py", "cli.py", "helpers.py", "__init__.py"}
# shared by the layers and defining no asset: metadata formatting, the automation condition,
# the CLI modules' `--lake` option
SHARED = {"robolake_assets.helpers", "robolake_assets.metadata", "robolake_assets.automation",
          "robolake_assets.cli_common"}


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= ({node.module} if node.module != "robolake_assets"
                      else {f"robolake_assets.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n.startswith("robolake_assets.")}


def test_no_asset_module_imports_another():
    modules = sorted(p for p in ASSETS.glob("*.py") if p.name not in ASSEMBLERS
                     and f"robolake_assets.{p.stem}" not in SHARED)
    assert {p.stem for p in modules} >= {"raw", "cleaned", "datasets", "models", "maintenance"}
    imports = {p.stem: _imported(p) - SHARED for p in modules}
    assert imports == {p.stem: set() for p in modules}


def test_markdown_table_escapes_cells():
    assert markdown_table(["a", "b"], [(1, "x|y"), ("two\nlines", 2.5)]) == (
        "| a | b |\n|---|---|\n| 1 | x\\|y |\n| two lines | 2.5 |")
    assert markdown_table(["only"], []) == "| only |\n|---|"


def test_every_cleaned_table_has_one_asset():
    assert {TABLES[kind] for kind in CLEANED_ASSET_KINDS.values()} == set(TABLES.values())
    assert cleaned_asset_of_table(TABLES["imu"]) == "cleaned_imu"
    assert cleaned_asset_of_table(TABLES["aligned"]) == "cleaned_aligned_frames"
    with pytest.raises(KeyError, match="'raw/uploads' is not a cleaned table"):
        cleaned_asset_of_table("raw/uploads")
