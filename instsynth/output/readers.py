"""Reading committed rows: only units with a marker, unit by unit (streams, never collects), any row
format's columns (``schema.read_columns``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from instsynth.io.parquet import parquet_footer, read_parquet, read_parquet_columns
from instsynth.output.layout import FAILURE_SCHEMA, failures_path
from instsynth.output.ledger import committed_parts, committed_units
from instsynth.output.schema import (
    normalize,
    read_columns,  # noqa: E402 - the row lives in schema.py
)


def iter_tables(out: str, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Stream committed rows one unit at a time (memory stays flat as the dataset grows).  ``columns``
    are today's names; a part written in the first row format yields the columns that stand in for
    them (``schema.read_columns``): pass its rows through ``schema.normalize``."""
    for p in committed_parts(out):
        yield read_part(p, columns)


def read_part(path: str, columns: list[str] | None = None) -> pa.Table:
    """One part file, ``columns`` in today's names (see ``iter_tables``)."""
    if columns is None:
        return read_parquet(path)
    footer = parquet_footer(path)  # one read: the schema and, for a small part, all of it
    return read_parquet_columns(path, read_columns(footer[0].schema.to_arrow_schema(), columns),
                                        footer=footer)


def iter_rows(out: str, columns: list[str] | None = None) -> Iterator[dict]:
    """Committed rows as dicts in today's format (older rows normalized)."""
    for t in iter_tables(out, columns):
        for r in t.to_pylist():
            yield normalize(r)


def read_failures(out: str) -> pa.Table:
    tables = [read_parquet(failures_path(out, u))
              for u, m in sorted(committed_units(out).items()) if m["failures"]]
    return pa.concat_tables(tables) if tables else FAILURE_SCHEMA.empty_table()
