"""YAML files validated by pydantic (dataset specs, training configs): one error style.

Each problem is one line naming the file and the field and saying what was
expected, e.g. `specs/ego.yaml: output.splits: train + val + test must sum to 1`.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")  # names folders, assets, models
SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+$")
SEMVER_EXPECTED = "expected a semantic version MAJOR.MINOR.PATCH, e.g. 1.0.0"


class Strict(BaseModel):
    """Unknown fields are errors (a misspelt option never silently does nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_error(error: dict, prefix: tuple = ()) -> str:
    """`field.path: what was wrong` for one pydantic error."""
    path = ".".join(str(p) for p in (*prefix, *error["loc"])) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling)"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message += f" (got {error['input']!r})"
    return f"{path}: {message}"


def error_lines(source: str, exc: ValidationError, prefix: tuple = ()) -> str:
    return "\n".join(f"{source}: {describe_error(e, prefix)}" for e in exc.errors())


def read_yaml(path: Path, error: type[ValueError], what: str) -> object:
    """The parsed file; `error` names the file (and the line of a syntax error)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{path}: not valid YAML{where}") from None
