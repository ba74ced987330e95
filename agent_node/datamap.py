"""The declarative data map (TOML, RFC-less but schema-checked here).

It names the sources a node may read and, for each logical dataset, the source table, the
subject key column(s), an optional row key, and each column's type and scope tier
(``identity`` / ``transaction`` / ``sentiment``, the tiers of ``consent.grants.Scope``).
Only names found here ever become SQL identifiers; every error names the offending key.

    [sources.sales]
    kind = "sqlite"            # sqlite | csv | postgresql | mariadb
    path = "sales.db"          # relative to the data map's folder

    [datasets.orders]
    source = "sales"
    table = "orders"
    subject_key = ["customer_id"]
    row_key = ["order_id"]     # optional; without it rows are keyed by their content
    max_rows_per_subject = 10  # contribution bound used by differential privacy
    on_bad_row = "refuse"      # or "skip": a malformed row is reported and left out

    [datasets.orders.columns]
    amount = { type = "real", scope = "transaction", bounds = [0, 500] }
    email  = { type = "text", scope = "identity" }

    [datasets.orders.columns.region]
    type = "text"
    scope = "transaction"
    index = true
    groups_per_subject = 1
    public_keys = ["north", "south", "east", "west"]

Differential privacy reads three contribution bounds from here: ``max_rows_per_subject``
(rows one customer adds to an answer, all groups together), a numeric column's ``bounds``
(each value is clamped to them) and, on a column the requester groups by,
``groups_per_subject`` (how many of its values one customer's rows may span; rows beyond
are dropped) and/or ``public_keys`` (the column's values, all released without partition
selection; other values never appear).
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_node.errors import DataMapError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
# Source-side identifiers (tables, columns) may carry a schema prefix or dots (CSV headers);
# they are always quoted by the connector, and quotes are refused outright.
SOURCE_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\- ]{0,127}$")
KINDS = ("sqlite", "csv", "postgresql", "mariadb")
TYPES = ("text", "integer", "real")
SCOPES = ("identity", "transaction", "sentiment")
ENCRYPTED_SCOPES = frozenset({"identity", "sentiment"})


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    options: dict[str, Any]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    scope: str
    source_column: str
    bounds: tuple[float, float] | None = None
    index: bool = False
    public_keys: tuple[str | int | float, ...] | None = None
    groups_per_subject: int | None = None

    @property
    def group_bound(self) -> int | None:
        """How many groups of this column one customer can touch (l0), if declared."""
        if self.groups_per_subject is not None:
            return self.groups_per_subject
        return len(self.public_keys) if self.public_keys is not None else None

    @property
    def encrypted(self) -> bool:
        return self.scope in ENCRYPTED_SCOPES

    @property
    def numeric(self) -> bool:
        return self.type in ("integer", "real")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str
    table: str
    subject_key: tuple[str, ...]
    row_key: tuple[str, ...]
    columns: dict[str, ColumnSpec] = field(default_factory=dict)
    max_rows_per_subject: int = 10
    #: What intent models may read (``fl.features.FeatureSpec``), if declared.
    features: Any = None
    #: A malformed source row (a CSV line with extra or missing fields, a value not of its
    #: column's type, an empty subject key): ``refuse`` the sync (nothing changes) or
    #: ``skip`` the row; either way it is reported with where it is, never altered.
    on_bad_row: str = "refuse"

    def column(self, name: str) -> ColumnSpec:
        try:
            return self.columns[name]
        except KeyError:
            known = ", ".join(sorted(self.columns)) or "none"
            raise KeyError(
                f"column {name!r} is not in the data map of dataset {self.name!r} "
                f"(known columns: {known})"
            ) from None


@dataclass(frozen=True)
class DataMap:
    sources: dict[str, SourceSpec]
    datasets: dict[str, DatasetSpec]
    base_dir: Path


def _fail(key: str, problem: str) -> DataMapError:
    return DataMapError(f"data map key {key!r}: {problem}")


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise _fail(f"{where}{key}", "must be a table")
    return value


def _name(key: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise _fail(key, "names must be lower-case letters, digits and '_' starting with a letter")
    return value


def _string_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, "must be a list of column names")
    for item in value:
        if not SOURCE_IDENT_RE.match(item):
            raise _fail(key, f"{item!r} is not a valid source column name")
    return tuple(value)


def _parse_source(name: str, raw: Any) -> SourceSpec:
    key = f"sources.{name}"
    _name(key, name)
    if not isinstance(raw, dict):
        raise _fail(key, "must be a table")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise _fail(f"{key}.kind", f"must be one of {', '.join(KINDS)}")
    required = {"sqlite": ("path",), "csv": ("path",), "postgresql": ("dsn",),
                "mariadb": ("host", "user", "database")}[kind]
    for option in required:
        if not isinstance(raw.get(option), str) or not raw[option]:
            raise _fail(f"{key}.{option}", f"is required for kind {kind!r} (a string)")
    if "port" in raw and not isinstance(raw["port"], int):
        raise _fail(f"{key}.port", "must be an integer")
    options = {k: v for k, v in raw.items() if k != "kind"}
    return SourceSpec(name=name, kind=kind, options=options)


def _parse_bounds(key: str, raw: Any) -> tuple[float, float] | None:
    if raw is None:
        return None
    if (not isinstance(raw, list) or len(raw) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
            or raw[0] >= raw[1]):
        raise _fail(key, "must be [low, high] with two numbers, low < high")
    return float(raw[0]), float(raw[1])


def _parse_column(dataset: str, name: str, raw: Any) -> ColumnSpec:
    key = f"datasets.{dataset}.columns.{name}"
    _name(key, name)
    if not isinstance(raw, dict):
        raise _fail(key, 'must be an inline table like { type = "real", scope = "transaction" }')
    unknown = set(raw) - {"type", "scope", "source_column", "bounds", "index", "public_keys",
                          "groups_per_subject"}
    if unknown:
        raise _fail(f"{key}.{sorted(unknown)[0]}", "is not a known column option")
    if raw.get("type") not in TYPES:
        raise _fail(f"{key}.type", f"must be one of {', '.join(TYPES)}")
    if raw.get("scope") not in SCOPES:
        raise _fail(f"{key}.scope", f"must be one of {', '.join(SCOPES)}")
    source_column = raw.get("source_column", name)
    if not isinstance(source_column, str) or not SOURCE_IDENT_RE.match(source_column):
        raise _fail(f"{key}.source_column", "must be a plain column name without quotes")
    bounds = _parse_bounds(f"{key}.bounds", raw.get("bounds"))
    if bounds and raw["type"] == "text":
        raise _fail(f"{key}.bounds", "only numeric columns take bounds")
    index = raw.get("index", False)
    if not isinstance(index, bool):
        raise _fail(f"{key}.index", "must be true or false")
    return ColumnSpec(name, raw["type"], raw["scope"], source_column, bounds, index,
                      _parse_public_keys(f"{key}.public_keys", raw.get("public_keys"),
                                         raw["type"]),
                      _parse_groups(f"{key}.groups_per_subject", raw.get("groups_per_subject")))


MAX_PUBLIC_KEYS = 1000
BAD_ROW_POLICIES = ("refuse", "skip")


def _parse_public_keys(key: str, raw: Any, kind: str) -> tuple[str | int | float, ...] | None:
    if raw is None:
        return None
    want = str if kind == "text" else (int | float)
    if (not isinstance(raw, list) or not 0 < len(raw) <= MAX_PUBLIC_KEYS
            or any(isinstance(v, bool) or not isinstance(v, want) for v in raw)
            or len(set(raw)) != len(raw)):
        raise _fail(key, f"must be a list of 1 to {MAX_PUBLIC_KEYS} distinct "
                         f"{'strings' if kind == 'text' else 'numbers'}: the column's values")
    return tuple(raw)


def _parse_groups(key: str, raw: Any) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 1000:
        raise _fail(key, "must be an integer from 1 to 1000: how many of this column's "
                         "values one customer's rows may span")
    return raw


def _parse_dataset(name: str, raw: Any, sources: dict[str, SourceSpec]) -> DatasetSpec:
    key = f"datasets.{name}"
    _name(key, name)
    if not isinstance(raw, dict):
        raise _fail(key, "must be a table")
    source = raw.get("source")
    if source not in sources:
        known = ", ".join(sorted(sources)) or "none defined"
        raise _fail(f"{key}.source", f"must name a [sources.*] entry (known: {known})")
    table = raw.get("table", "")
    if sources[source].kind != "csv" and (not isinstance(table, str)
                                          or not SOURCE_IDENT_RE.match(table)):
        raise _fail(f"{key}.table", "is required: the source table's name, without quotes")
    subject_key = _string_list(f"{key}.subject_key", raw.get("subject_key"))
    if not subject_key:
        raise _fail(f"{key}.subject_key", "must name at least one column")
    row_key = _string_list(f"{key}.row_key", raw.get("row_key", []))
    columns_raw = _table(raw, "columns", f"{key}.")
    if not columns_raw:
        raise _fail(f"{key}.columns", "must map at least one column")
    columns = {c: _parse_column(name, c, spec) for c, spec in columns_raw.items()}
    bound = raw.get("max_rows_per_subject", 10)
    if not isinstance(bound, int) or isinstance(bound, bool) or bound < 1:
        raise _fail(f"{key}.max_rows_per_subject", "must be a positive integer")
    on_bad_row = raw.get("on_bad_row", "refuse")
    if on_bad_row not in BAD_ROW_POLICIES:
        raise _fail(f"{key}.on_bad_row", 'must be "refuse" (the default: a malformed row '
                    'stops the sync) or "skip" (it is reported and left out)')
    unknown = set(raw) - {"source", "table", "subject_key", "row_key", "columns",
                          "max_rows_per_subject", "features", "on_bad_row"}
    if unknown:
        raise _fail(f"{key}.{sorted(unknown)[0]}", "is not a known dataset option")
    features = None
    if "features" in raw:
        from fl.features import FeatureSpecError, parse_features  # pure: numpy and OpenDP

        try:
            features = parse_features(f"{key}.features", raw["features"],
                                      {c: spec.bounds for c, spec in columns.items()})
        except FeatureSpecError as exc:
            raise DataMapError(str(exc)) from None
    return DatasetSpec(name, source, str(table), subject_key, row_key, columns, bound,
                       features, on_bad_row)


def parse_datamap(document: dict[str, Any], base_dir: Path) -> DataMap:
    """Validate a parsed TOML document; raise ``DataMapError`` naming the first bad key."""
    unknown = set(document) - {"sources", "datasets"}
    if unknown:
        raise _fail(sorted(unknown)[0], "is not a known top-level table (sources, datasets)")
    sources_raw = _table(document, "sources", "")
    sources = {n: _parse_source(n, raw) for n, raw in sources_raw.items()}
    datasets_raw = _table(document, "datasets", "")
    datasets = {n: _parse_dataset(n, raw, sources) for n, raw in datasets_raw.items()}
    return DataMap(sources=sources, datasets=datasets, base_dir=base_dir)


def load_datamap(path: Path) -> DataMap:
    """Read and validate the data map TOML file at ``path``."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataMapError(f"data map {path} does not exist: create it (see docs/operator.md)")\
            from None
    return _parsed(str(path), text)


@functools.lru_cache(maxsize=16)
def _parsed(path: str, text: str) -> DataMap:
    """The data map of that file's text: parsed once per text (an erasure, a sync, each
    command reads it again; parsing and validating costs far more than reading)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataMapError(f"data map {path} is not valid TOML: {exc}") from None
    return parse_datamap(document, Path(path).parent)


TEMPLATE = '''# Data map: which source tables the node may read, and each column's scope tier.
# Scope tiers: identity and sentiment columns are SM4-encrypted per subject in the vault;
# transaction columns are stored so that aggregates run inside SQL.
# See docs/operator.md for every option.
#
# [sources.sales]
# kind = "sqlite"
# path = "/srv/erp/sales.db"
#
# [datasets.orders]
# source = "sales"
# table = "orders"
# subject_key = ["customer_id"]
# row_key = ["order_id"]
#
# max_rows_per_subject = 10   # differential privacy: rows one customer adds to an answer
# on_bad_row = "refuse"       # or "skip": a malformed source row is reported, left out
#
# [datasets.orders.columns]
# amount = { type = "real", scope = "transaction", bounds = [0, 500] }   # clamp, sized to data
# email = { type = "text", scope = "identity" }
#
# [datasets.orders.columns.region]
# type = "text"
# scope = "transaction"
# index = true
# groups_per_subject = 1                              # one region per customer
# public_keys = ["north", "south", "east", "west"]    # released without partition selection
'''
