"""YAML files validated by pydantic (dataset specs, training configs): one error style.

Each problem is one line naming the file and the field and saying what was
expected, e.g. `specs/ego.yaml: output.splits: train + val + test must sum to 1`.
Names and versions follow the same rules everywhere (`name_type`, `SemVer`), and
a validated file is identified by its canonical hash (`Strict.canonical_hash`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")  # names folders, assets, models
SEMVER_RE = re.compile(r"^\d+\.\d+\.\d+$")
SEMVER_EXPECTED = "expected a semantic version MAJOR.MINOR.PATCH, e.g. 1.0.0"


class Strict(BaseModel):
    """Unknown fields are errors (a misspelt option never silently does nothing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def canonical_hash(self, exclude: set[str] | None = None) -> str:
        """sha256 of the canonical JSON (sorted keys, no spaces) of the validated model
        (without the top-level fields in `exclude`)."""
        canonical = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def name_type(names: str) -> Any:
    """A `str` field type matching NAME_RE; `names` says what the value names (a folder,
    an asset...), so the error explains why the rule exists."""

    def check(name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(f"expected lowercase letters, digits, '_' or '-' (it names {names})")
        return name

    return Annotated[str, AfterValidator(check)]


def _check_semver(version: str) -> str:
    if not SEMVER_RE.match(version):
        raise ValueError(SEMVER_EXPECTED)
    return version


SemVer = Annotated[str, AfterValidator(_check_semver)]


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


def validate_model(model: type[BaseModel], data: object, source: str, error: type[ValueError],
                   expected: str) -> Any:
    """`data` (parsed YAML) validated as `model`; `error` lists every problem, one per
    line, naming `source` and the field. `expected` says what the top level should be."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping with {expected} (got {type(data).__name__})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(error_lines(source, exc)) from None
