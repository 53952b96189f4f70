"""Delta tables in the lake: thin helpers over deltalake shared by every layer."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from robolake.storage import Store


def open_table(lake: Store, key: str) -> DeltaTable | None:
    try:
        return DeltaTable(lake.table_uri(key), storage_options=lake.delta_options or None)
    except TableNotFoundError:
        return None


def read_table(lake: Store, key: str, columns: Sequence[str] | None = None,
               filters: dict[str, object] | None = None,
               version: int | None = None) -> pa.Table | None:
    """The table (its current version, or `version`) as Arrow with equality filters, or
    None if it does not exist.

    Read through polars: a pyarrow dataset from deltalake left alive at
    interpreter exit aborts the process ("terminate called without an active
    exception").
    """
    if open_table(lake, key) is None:
        return None
    frame = pl.scan_delta(lake.table_uri(key), version=version,
                          storage_options=lake.delta_options or None)
    for col, value in (filters or {}).items():
        frame = frame.filter(pl.col(col) == value)
    if columns:
        frame = frame.select(list(columns))
    return frame.collect().to_arrow()


def _write(lake: Store, key: str, data: pa.Table, attempts: int = 5, **kwargs) -> int:
    """write_deltalake, retried when a concurrent writer won the commit.

    delta-rs commits optimistically; two runs creating the same table at once
    (or changing its metadata) make one of them fail with nothing written, so
    trying again is safe. Returns the new table version.
    """
    for attempt in range(attempts):
        try:
            write_deltalake(lake.table_uri(key), data, storage_options=lake.delta_options or None,
                            **kwargs)
            break
        except CommitFailedError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))
    table = open_table(lake, key)
    assert table is not None
    return table.version()


def append_rows(lake: Store, key: str, rows: list[dict], schema: pa.Schema,
                partition_by: Sequence[str] | None = None) -> int:
    """Append rows in one commit; returns the new table version.

    Appends never conflict with each other in delta-rs, so runs on different
    partitions can write at the same time.
    """
    return _write(lake, key, pa.Table.from_pylist(rows, schema=schema), mode="append",
                  partition_by=list(partition_by) if partition_by else None)


def overwrite_table(lake: Store, key: str, data: pa.Table,
                    partition_by: Sequence[str] | None = None) -> int:
    """Replace the whole table's contents in one commit (earlier versions stay readable)."""
    return _write(lake, key, data, mode="overwrite", schema_mode="overwrite",
                  partition_by=list(partition_by) if partition_by else None)


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def replace_rows(lake: Store, key: str, data: pa.Table, column: str, values: Sequence[str],
                 partition_by: Sequence[str] | None = None,
                 scope: dict[str, str] | None = None) -> int:
    """Replace every row whose `column` is in `values` with `data`, in one commit.

    Re-running a partition therefore replaces exactly its rows (`scope` adds
    equality terms on partition columns so concurrent runs on other partitions
    touch other files). Returns the new table version.
    """
    terms = [f"{k} = '{v}'" for k, v in (scope or {}).items()]
    terms.append(f"{column} IN ({_sql_list(values)})" if values else "false")
    return _write(lake, key, data, mode="overwrite", predicate=" AND ".join(terms),
                  partition_by=list(partition_by) if partition_by else None)
