"""Dagster helpers shared by the asset modules (no asset module imports another).

The metadata renderers (one markdown table, one markdown list, a table schema),
the asset keys of datasets, and the map between cleaned assets and the table
kinds of `robolake.cleaned` live here once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg
import pyarrow as pa

from robolake.cleaned import TABLES
from robolake.costs.runs import missing_owner_tags
from robolake.governance import catalog
from robolake.settings import get_settings

DATASETS_GROUP = "datasets"

# cleaned asset name -> table kind in robolake.cleaned.TABLES (the one written map)
CLEANED_ASSET_KINDS = {
    "cleaned_imu": "imu",
    "cleaned_gps": "gps",
    "cleaned_lidar": "lidar",
    "cleaned_camera_frames": "camera",
    "cleaned_aligned_frames": "aligned",
    "cleaned_quality_reports": "report",
}


def cleaned_asset_of_table(table_key: str) -> str:
    """The cleaned asset that writes a Delta table (e.g. "cleaned/imu" -> "cleaned_imu")."""
    for name, kind in CLEANED_ASSET_KINDS.items():
        if TABLES[kind] == table_key:
            return name
    raise KeyError(f"{table_key!r} is not a cleaned table; expected one of "
                   f"{', '.join(sorted(TABLES.values()))}")


def asset_of_table(table_key: str) -> dg.AssetKey:
    """The asset that writes a catalog table (cleaned, features or raw)."""
    others = {"raw/uploads": "raw_uploads", "features/corner_cases": "corner_case_scores"}
    if table_key in others:
        return dg.AssetKey(others[table_key])
    return dg.AssetKey(cleaned_asset_of_table(table_key))


def _deps(refs) -> list[dg.TableColumnDep]:
    return [dg.TableColumnDep(asset_of_table(ref.rpartition(".")[0]), ref.rpartition(".")[2])
            for ref in refs]


def column_lineage(table_key: str) -> dict:
    """`dagster/column_lineage` of a catalog table whose columns are derived from others
    (from the catalog's `derived_from`); {} for a table with no derived columns."""
    deps = {c.name: _deps(c.derived_from) for c in catalog.table(table_key).columns
            if c.derived_from}
    return {"dagster/column_lineage": dg.TableColumnLineage(deps)} if deps else {}


def dataset_column_lineage(features: list[str]) -> dict:
    """`dagster/column_lineage` of a dataset: each sample field back to the cleaned (or
    feature) columns it is computed from."""
    sources = catalog.sample_field_sources(features)
    return {"dagster/column_lineage": dg.TableColumnLineage(
        {name: _deps(refs) for name, refs in sources.items()})}


def model_column_lineage(dataset: str, inputs: Sequence[str]) -> dict:
    """`dagster/column_lineage` of a trained model: each input (and the label it learns)
    back to the field of the dataset's samples it is read from."""
    if not inputs:
        return {}
    key = dataset_asset_key(dataset)
    return {"dagster/column_lineage": dg.TableColumnLineage(
        {name: [dg.TableColumnDep(key, name)] for name in (*inputs, "label")})}


def dataset_asset_key(name: str) -> dg.AssetKey:
    """The asset of a dataset spec: ["datasets", <spec name>]."""
    return dg.AssetKey([DATASETS_GROUP, name])


def _column(c, type_name: str) -> dg.TableColumn:
    """A catalog column as the UI shows it: classification tag, description and, for a derived
    column, the columns it comes from (the open-source UI does not draw column lineage)."""
    source = f" (from {', '.join(c.derived_from)})" if c.derived_from else ""
    return dg.TableColumn(c.name, type_name, description=f"[{c.classification}] "
                          f"{c.description}{source}", tags={"classification": c.classification})


def column_schema(schema: pa.Schema, table_key: str | None = None) -> dg.TableSchema:
    """The schema as Dagster shows it; with `table_key`, each column carries its catalog
    description and a `classification` tag (robolake/governance/catalog.py)."""
    declared = {c.name: c for c in catalog.table(table_key).columns} if table_key else {}

    return dg.TableSchema(columns=[
        _column(declared[f.name], str(f.type)) if f.name in declared
        else dg.TableColumn(f.name, str(f.type)) for f in schema])


def catalog_schema(table_key: str, schema: pa.Schema | None = None) -> dg.TableSchema:
    """A table's declared columns (definition metadata: shown before any materialization),
    typed from `schema` where it has the column."""
    types = {f.name: str(f.type) for f in schema} if schema is not None else {}
    return dg.TableSchema(columns=[_column(c, types.get(c.name, "?"))
                                   for c in catalog.table(table_key).columns])


def governed(table_key: str, schema: pa.Schema | None = None) -> dict:
    """Owners, tags and definition metadata of the asset that writes a catalog table."""
    t = catalog.table(table_key)
    return {"owners": [t.owner],
            "tags": {"classification": t.classification, "layer": t.layer},
            "metadata": {"dagster/column_schema": catalog_schema(table_key, schema),
                         "dagster/table_name": t.key, "classification": t.classification}}


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A markdown table for asset metadata; cells are str()-ed, pipes escaped."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_list(items: Iterable[str], empty: str = "none") -> dg.MetadataValue:
    """A bulleted markdown list for asset metadata (`empty` when there is nothing)."""
    return dg.MetadataValue.md("\n".join(f"- {item}" for item in items) or empty)


# ----------------------------------------------------------------- who pays (issue 14)
# Training and dataset runs are charged to a team and a project (run tags robolake/team
# and robolake/project; their jobs carry them from configs/budgets.yaml). Those assets
# call `require_owner_tags` first: on Kubernetes a run without the tags fails at once,
# naming them (nothing was spent yet); on a laptop it is logged and the run is charged
# to `unattributed`.

def owner_tags_problem(tags: dict[str, str], job_name: str) -> str | None:
    missing = missing_owner_tags(tags)
    if not missing:
        return None
    return (f"run of {job_name} has no {' or '.join(missing)} tag: training and dataset runs "
            "are charged to a team and project; launch it through its job (train_*, "
            "build_datasets) or add the tags")


def require_owner_tags(context: dg.AssetExecutionContext, deployment: str | None = None) -> None:
    problem = owner_tags_problem(dict(context.run.tags), context.run.job_name)
    if problem is None:
        return
    if (deployment or get_settings().deployment) == "k8s":
        raise dg.Failure(description=problem, allow_retries=False)
    context.log.warning(f"{problem} (a laptop run: charged to unattributed)")
