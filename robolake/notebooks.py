"""Notebooks that become scheduled jobs: `notebooks/*.ipynb`, run with papermill.

A notebook is runnable when it has a cell tagged `parameters` (papermill's convention):
the variables assigned there are its defaults, and a run overrides them. `run_notebook`
executes it in a fresh kernel, then keeps what people look at: the executed notebook,
its HTML (nbconvert) and every figure it displayed (PNG), put into the lake under
`notebooks/<name>/<run id>/`. A cell that fails fails the run with the cell's error,
and the executed notebook up to that cell is still kept.

`notebooks/schedules.yaml` says which notebooks run when (see `NotebookSchedule`):

    explore_day:             # the notebook's file name without .ipynb
      cron: "0 6 * * *"      # UTC
      parameters: {robot_type: delivery}
      pool: cpu_spot         # a node pool of robolake_resources.pools

Every notebook in the folder is an asset in the Dagster UI, scheduled or not.
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from pydantic import Field, ValidationError, model_validator

from robolake.storage import Store
from robolake.yaml_config import Strict, error_lines, read_yaml

SCHEDULES_FILE = "schedules.yaml"
POOLS = ("cpu_spot", "cpu_on_demand", "gpu_standard", "gpu_high")


class NotebookSchedule(Strict):
    cron: str = Field(description="when to run, a cron expression in UTC")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="values for the parameters cell")
    pool: str = Field("cpu_spot", description=f"node pool: one of {', '.join(POOLS)}")

    @model_validator(mode="after")
    def _check(self) -> NotebookSchedule:
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r}: expected one of {', '.join(POOLS)}")
        if len(self.cron.split()) != 5:
            raise ValueError(f"cron {self.cron!r}: expected five fields (minute hour day "
                             "month weekday)")
        return self


def notebook_parameters(path: Path) -> dict[str, str]:
    """The variables of the `parameters` cell and their default source text; a notebook
    without one is not runnable (ValueError naming the file)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out = {}
            for line in cell.source.splitlines():
                name, eq, value = line.partition("=")
                if eq and name.strip().isidentifier():
                    out[name.strip()] = value.split("#")[0].strip()
            return out
    raise ValueError(f"{path}: no cell tagged 'parameters' (papermill's convention): tag the "
                     "cell that assigns the notebook's inputs")


def load_notebooks(folder: Path) -> tuple[dict[str, Path], dict[str, NotebookSchedule]]:
    """Runnable notebooks by name, and their schedules; errors name the file and field."""
    notebooks = {p.stem: p for p in sorted(folder.glob("*.ipynb"))} if folder.is_dir() else {}
    for path in notebooks.values():
        notebook_parameters(path)
    schedules: dict[str, NotebookSchedule] = {}
    file = folder / SCHEDULES_FILE
    if file.exists():
        data = read_yaml(file, ValueError, "schedules file") or {}
        if not isinstance(data, dict):
            raise ValueError(f"{file}: expected a mapping of notebook name -> schedule")
        for name, entry in data.items():
            if name not in notebooks:
                raise ValueError(f"{file}: {name}: not a notebook in {folder} (have "
                                 f"{', '.join(notebooks) or 'none'})")
            try:
                schedules[name] = NotebookSchedule.model_validate(entry)
            except ValidationError as exc:
                raise ValueError(error_lines(str(file), exc, (name,))) from None
    return notebooks, schedules


@dataclass
class NotebookRun:
    name: str
    keys: dict[str, str] = field(default_factory=dict)  # ipynb, html -> lake key
    figures: list[str] = field(default_factory=list)  # lake keys of the PNGs
    error: str | None = None  # the failing cell's error; None when every cell ran
    outputs: dict[str, Any] = field(default_factory=dict)  # `display(..., raw=True)` JSON


def _figures_and_outputs(nb) -> tuple[list[bytes], dict[str, Any]]:
    pngs, outputs = [], {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                pngs.append(base64.b64decode(data["image/png"]))
            if "application/json" in data and isinstance(data["application/json"], dict):
                outputs.update(data["application/json"])
    return pngs, outputs


def run_notebook(path: Path, parameters: dict[str, Any], lake: Store, run_id: str,
                 timeout_s: int = 600) -> NotebookRun:
    """Execute the notebook with `parameters` and keep its outputs in the lake."""
    import papermill
    from nbconvert import HTMLExporter

    run = NotebookRun(path.stem)
    prefix = f"notebooks/{path.stem}/{run_id}"
    with tempfile.TemporaryDirectory(prefix="robolake-nb-") as tmp:
        executed = Path(tmp) / path.name
        try:
            papermill.execute_notebook(str(path), str(executed), parameters=parameters,
                                       kernel_name="python3", language="python",
                                       cwd=str(path.parent),
                                       execution_timeout=timeout_s, progress_bar=False)
        except papermill.PapermillExecutionError as exc:
            run.error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
        if not executed.exists():  # the kernel never started: nothing to keep
            raise RuntimeError(f"{path}: the notebook did not run ({run.error})")
        nb = nbformat.read(executed, as_version=4)
        html, _ = HTMLExporter().from_notebook_node(nb)
        pngs, run.outputs = _figures_and_outputs(nb)
        run.keys = {"ipynb": f"{prefix}/{path.name}", "html": f"{prefix}/{path.stem}.html"}
        lake.put_file(executed, run.keys["ipynb"])
        lake.write_bytes(run.keys["html"], html.encode())
        for i, png in enumerate(pngs, 1):
            key = f"{prefix}/figure-{i:02d}.png"
            lake.write_bytes(key, png)
            run.figures.append(key)
        lake.write_bytes(f"{prefix}/outputs.json", json.dumps(run.outputs).encode())
    return run
