"""Source connectors: SQLite and CSV files (RFC 4180), PostgreSQL (psycopg 3) and MariaDB
(PyMySQL).

Each connector streams the mapped columns of one dataset's table as :class:`SourceRow`s: a
dict keyed by source column name, where the row is (CSV: file and line; SQL: table, row
number and row key) and, for a row the source itself got wrong (a CSV line with more or fewer
fields than the header), what is wrong with it. Identifiers come only from the validated data
map and are quoted for the source's dialect; no value is ever spliced into SQL.
"""

from __future__ import annotations

import csv
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_node.datamap import DataMap, DatasetSpec, SourceSpec
from agent_node.errors import SourceError

FETCH_BATCH = 5000


@dataclass(frozen=True)
class SourceRow:
    """One source row: its values, where it is (``orders.csv line 17``, ``table orders row
    5 (order_id=1042)``) and, if malformed at the source, why (else None)."""

    values: dict[str, Any]
    where: str
    problem: str | None = None


def needed_columns(dataset: DatasetSpec) -> list[str]:
    """Source columns a sync reads: subject key, row key, then every mapped column."""
    names = [*dataset.subject_key, *dataset.row_key]
    names += [c.source_column for c in dataset.columns.values()]
    return list(dict.fromkeys(names))


def _quote(identifier: str, quote: str) -> str:
    if quote in identifier:
        raise SourceError(f"identifier {identifier!r} contains a quote character")
    return ".".join(f"{quote}{part}{quote}" for part in identifier.split("."))


def _select(dataset: DatasetSpec, quote: str) -> str:
    columns = ", ".join(_quote(c, quote) for c in needed_columns(dataset))
    # A dotted name is schema.table in SQL sources; column names are single identifiers.
    return f"SELECT {columns} FROM {_quote(dataset.table, quote)}"


def _resolve_path(base_dir: Path, raw: str) -> Path:
    path = Path(raw)
    return path if path.is_absolute() else base_dir / path


def _sqlite_rows(source: SourceSpec, dataset: DatasetSpec, base_dir: Path
                 ) -> Iterator[SourceRow]:
    path = _resolve_path(base_dir, source.options["path"])
    if not path.is_file():
        raise SourceError(f"source {source.name!r}: SQLite file {path} does not exist")
    names = needed_columns(dataset)
    # Read-only URI: a sync must never modify the operator's own database.
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            _check_sqlite_columns(conn, source, dataset)
            cursor = conn.execute(_select(dataset, '"'))
            yield from _located(dataset, names, cursor)
    except sqlite3.Error as exc:
        raise SourceError(f"source {source.name!r}: cannot read table {dataset.table!r}: {exc}")\
            from None


def _check_sqlite_columns(conn: sqlite3.Connection, source: SourceSpec,
                          dataset: DatasetSpec) -> None:
    """Refuse a mapped column the table lacks.

    SQLite reads a double-quoted name that matches no column as a string literal, so a typo
    in the data map would otherwise copy the column's name into every row of the vault.
    """
    schema, _, table = dataset.table.rpartition(".")
    present = {r[0] for r in conn.execute("SELECT name FROM pragma_table_xinfo(?, ?)",
                                          (table, schema or "main"))}
    if not present:
        return  # no such table: the SELECT itself says so
    missing = [n for n in needed_columns(dataset) if n not in present]
    if missing:
        raise SourceError(f"source {source.name!r}: table {dataset.table!r} has no column "
                          f"{missing[0]!r}; check the data map's column names against the table")


def _csv_rows(source: SourceSpec, dataset: DatasetSpec, base_dir: Path
              ) -> Iterator[SourceRow]:
    path = _resolve_path(base_dir, source.options["path"])
    if not path.is_file():
        raise SourceError(f"source {source.name!r}: CSV file {path} does not exist")
    delimiter = source.options.get("delimiter", ",")
    encoding = source.options.get("encoding", "utf-8")
    names = needed_columns(dataset)
    with path.open(newline="", encoding=encoding) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        missing = [n for n in names if n not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(
                f"source {source.name!r}: CSV file has no column {missing[0]!r}; "
                "check the data map's column names against the header"
            )
        width = len(reader.fieldnames or [])
        for row in reader:
            values = {n: (row[n] if row[n] != "" else None) for n in names}
            yield SourceRow(values, f"{path.name} line {reader.line_num}",
                            _csv_problem(row, width))


def _csv_problem(row: dict[str | None, Any], width: int) -> str | None:
    """What is wrong with a CSV record's shape: csv.DictReader keeps extra fields under the
    key None and fills missing ones with None (an empty field is ``""``), so neither may
    pass as a row."""
    extra = row.get(None)
    if extra:
        return f"{width + len(extra)} fields where the header has {width}"
    missing = sum(1 for k, v in row.items() if k is not None and v is None)
    if missing:
        return f"{width - missing} fields where the header has {width}"
    return None


def _postgres_rows(source: SourceSpec, dataset: DatasetSpec, base_dir: Path
                   ) -> Iterator[SourceRow]:
    import psycopg

    names = needed_columns(dataset)
    try:
        with psycopg.connect(source.options["dsn"], connect_timeout=10) as conn, \
                conn.cursor(name="sov_sync") as cursor:
            # A named (server-side) cursor streams large tables without loading them whole.
            cursor.execute(_select(dataset, '"').encode())
            yield from _located(dataset, names, cursor)
    except psycopg.Error as exc:
        raise SourceError(
            f"source {source.name!r}: PostgreSQL read of {dataset.table!r} failed: "
            f"{type(exc).__name__}; check the dsn, the table and the grants"
        ) from None


def _mariadb_rows(source: SourceSpec, dataset: DatasetSpec, base_dir: Path
                  ) -> Iterator[SourceRow]:
    import pymysql  # type: ignore[import-untyped]  # no stubs shipped
    import pymysql.cursors  # type: ignore[import-untyped]

    options = source.options
    password = os.environ.get(options["password_env"], "") if "password_env" in options else ""
    names = needed_columns(dataset)
    try:
        conn = pymysql.connect(
            host=options["host"], port=int(options.get("port", 3306)), user=options["user"],
            password=password, database=options["database"], connect_timeout=10,
            cursorclass=pymysql.cursors.SSCursor, charset="utf8mb4",
        )
        with closing(conn), conn.cursor() as cursor:
            cursor.execute(_select(dataset, "`"))
            yield from _located(dataset, names, cursor)
    except pymysql.MySQLError as exc:
        raise SourceError(
            f"source {source.name!r}: MariaDB read of {dataset.table!r} failed "
            f"(error {exc.args[0] if exc.args else '?'}); check host, database and table"
        ) from None


_READERS = {"sqlite": _sqlite_rows, "csv": _csv_rows, "postgresql": _postgres_rows,
            "mariadb": _mariadb_rows}


def read_rows(datamap: DataMap, dataset: DatasetSpec) -> Iterator[SourceRow]:
    """Stream the dataset's rows from its source, each with where it is."""
    source = datamap.sources[dataset.source]
    return _READERS[source.kind](source, dataset, datamap.base_dir)


def identity_columns(dataset: DatasetSpec) -> set[str]:
    """Source columns that identify a customer: the subject key and identity-scoped columns.
    Their values never appear in a message."""
    return {*dataset.subject_key,
            *(c.source_column for c in dataset.columns.values() if c.scope == "identity")}


def redact(dataset: DatasetSpec, source_column: str, value: Any) -> str:
    """A value as a message may show it: ``'12.5x'`` (cut at 40 characters), or
    ``(redacted: identity column)``."""
    if source_column in identity_columns(dataset):
        return "(redacted: identity column)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _located(dataset: DatasetSpec, names: list[str], cursor: Any) -> Iterator[SourceRow]:
    """An SQL cursor's rows, each named by its number and its row key (the row key says which
    row to fix; without one, the number in the SELECT's order)."""
    number = 0
    while batch := cursor.fetchmany(FETCH_BATCH):
        for row in batch:
            number += 1
            values = dict(zip(names, row, strict=True))
            key = ", ".join(f"{k}={redact(dataset, k, values[k])}" for k in dataset.row_key)
            yield SourceRow(values, f"table {dataset.table} row {number}"
                            + (f" ({key})" if key else ""))
