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


def dataset_asset_key(name: str) -> dg.AssetKey:
    """The asset of a dataset spec: ["datasets", <spec name>]."""
    return dg.AssetKey([DATASETS_GROUP, name])


def column_schema(schema: pa.Schema, table: str = "") -> dg.TableSchema:
    """The UI's column schema, each column with what it means (robolake/column_docs.py)."""
    from robolake.column_docs import describe

    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type),
                                                  description=describe(f.name, table) or None)
                                   for f in schema])


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
