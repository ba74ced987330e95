"""The structured aggregate query a requester sends (carried as JSON inside a sealed envelope).

    {"dataset": "orders", "purpose": "quote-generation", "grant_ids": ["urn:uuid:..."],
     "measures": ["count", "sum:amount", "avg:amount", "quantile:amount:0.9"],
     "filters": [{"column": "region", "op": "in", "value": ["north", "south"]}],
     "group_by": ["region"], "epsilon": 0.5}

A query may name an installed intent model by its digest (``"model": "<64 hex digits>"``,
``agent_node.scoring``): its dataset then has the columns ``score`` and ``score_band``.

Everything is checked for shape here; names are checked against the data map by the engine,
which is the only place they become SQL identifiers. Operators come from a fixed whitelist.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from agent_node.errors import InvalidRequest

AGGREGATES = ("count", "sum", "avg", "min", "max", "quantile", "median")
OPERATORS = {"=": "eq", "==": "eq", "!=": "ne", "<>": "ne", "<": "lt", "<=": "le", ">": "gt",
             ">=": "ge", "in": "in", "not in": "not_in"}
OPS = frozenset(OPERATORS.values())
MAX_MEASURES = 16
MAX_FILTERS = 16
MAX_GROUP_BY = 4
MAX_IN_VALUES = 100
MAX_TEXT = 256
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
GRANT_RE = re.compile(r"^urn:uuid:[0-9a-f-]{36}$")
MODEL_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_GRANT_IDS = 1000
MAX_REGIONS = 64

Scalar = str | int | float


@dataclass(frozen=True)
class Measure:
    aggregate: str
    column: str | None = None
    q: float | None = None

    @property
    def label(self) -> str:
        if self.column is None:
            return self.aggregate
        if self.aggregate == "quantile":
            return f"quantile:{self.column}:{self.q:g}"
        return f"{self.aggregate}:{self.column}"


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True)
class Query:
    dataset: str
    purpose: str
    measures: tuple[Measure, ...]
    filters: tuple[Filter, ...] = ()
    group_by: tuple[str, ...] = ()
    grant_ids: tuple[str, ...] = ()
    epsilon: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    regions: tuple[str, ...] = ()  # the requester's allowed regions; the node refuses others
    model: str | None = None  # an installed model's digest: score with it (agent_node.scoring)

    def columns(self) -> set[str]:
        """Every data-map column the query touches (for scope checks)."""
        names = {m.column for m in self.measures if m.column}
        names |= {f.column for f in self.filters}
        names |= set(self.group_by)
        return names

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "dataset": self.dataset, "purpose": self.purpose,
            "measures": [m.label for m in self.measures],
            "filters": [{"column": f.column, "op": f.op,
                         "value": list(f.value) if isinstance(f.value, tuple) else f.value}
                        for f in self.filters],
            "group_by": list(self.group_by), "grant_ids": list(self.grant_ids),
        }
        if self.epsilon is not None:
            body["epsilon"] = self.epsilon
        if self.model is not None:
            body["model"] = self.model
        return body


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidRequest(f"{what} must be a data-map name (lower-case letters, digits, '_'); "
                             "ask the node operator for the data map")
    return value


def parse_measure(text: Any) -> Measure:
    if not isinstance(text, str) or len(text) > 100:
        raise InvalidRequest("a measure must be a string like 'count', 'sum:amount' or "
                             "'quantile:amount:0.9'")
    parts = text.split(":")
    aggregate = parts[0]
    if aggregate not in AGGREGATES:
        raise InvalidRequest(f"unknown aggregate {aggregate[:20]!r}: use one of "
                             f"{', '.join(AGGREGATES)}")
    if aggregate == "count" and len(parts) == 1:
        return Measure("count")
    if aggregate == "quantile":
        if len(parts) != 3:
            raise InvalidRequest("a quantile measure is 'quantile:COLUMN:Q' with 0 < Q < 1")
        try:
            q = float(parts[2])
        except ValueError:
            q = math.nan
        if not 0 < q < 1:
            raise InvalidRequest("a quantile's Q must be a number strictly between 0 and 1")
        return Measure("quantile", _name(parts[1], "a measure's column"), q)
    if aggregate == "median" and len(parts) == 2:
        return Measure("quantile", _name(parts[1], "a measure's column"), 0.5)
    if len(parts) != 2:
        raise InvalidRequest(f"measure {aggregate!r} takes exactly one column: '{aggregate}:COL'")
    return Measure(aggregate, _name(parts[1], "a measure's column"))


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest("filter values must be strings or numbers")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest("filter values must be finite numbers")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise InvalidRequest(f"filter values are at most {MAX_TEXT} characters")
    return value


def parse_filter(raw: Any) -> Filter:
    if not isinstance(raw, dict) or set(raw) != {"column", "op", "value"}:
        raise InvalidRequest("a filter is an object with exactly column, op and value")
    op = raw["op"]
    if op not in OPS:
        raise InvalidRequest(f"unknown filter operator: use one of {', '.join(sorted(OPS))}")
    column = _name(raw["column"], "a filter's column")
    value = raw["value"]
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not 0 < len(value) <= MAX_IN_VALUES:
            raise InvalidRequest(f"an 'in' filter takes a list of 1 to {MAX_IN_VALUES} values")
        return Filter(column, op, tuple(_scalar(v) for v in value))
    return Filter(column, op, _scalar(value))


def _list(raw: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise InvalidRequest(f"the query's {key!r} must be a list")
    if len(value) > limit:
        raise InvalidRequest(f"the query's {key!r} has more than {limit} entries")
    return value


def query_from_dict(raw: Any) -> Query:
    """Validate the shape of a query object; raise ``InvalidRequest`` saying what is wrong."""
    if not isinstance(raw, dict):
        raise InvalidRequest("the query must be a JSON object")
    known = {"dataset", "purpose", "measures", "filters", "group_by", "grant_ids", "epsilon",
             "regions", "model"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidRequest(f"unknown query field {unknown[0][:40]!r}: known fields are "
                             f"{', '.join(sorted(known))}")
    purpose = raw.get("purpose")
    if not isinstance(purpose, str) or not purpose or len(purpose) > 64:
        raise InvalidRequest("the query needs a purpose from the controlled vocabulary")
    measures = tuple(parse_measure(m) for m in _list(raw, "measures", MAX_MEASURES))
    if not measures:
        raise InvalidRequest("the query needs at least one measure, e.g. 'count'")
    group_by = tuple(_name(g, "a group-by column") for g in _list(raw, "group_by", MAX_GROUP_BY))
    grant_ids = tuple(_list(raw, "grant_ids", MAX_GRANT_IDS))
    for gid in grant_ids:
        if not isinstance(gid, str) or not GRANT_RE.match(gid):
            raise InvalidRequest("grant ids are 'urn:uuid:...' strings as the wallet printed them")
    epsilon = raw.get("epsilon")
    if epsilon is not None and (isinstance(epsilon, bool) or not isinstance(epsilon, int | float)
                                or not 0 < epsilon <= 10):
        raise InvalidRequest("epsilon must be a number in (0, 10]")
    return Query(
        dataset=_name(raw.get("dataset"), "the dataset"), purpose=purpose, measures=measures,
        filters=tuple(parse_filter(f) for f in _list(raw, "filters", MAX_FILTERS)),
        group_by=group_by, grant_ids=grant_ids,
        epsilon=float(epsilon) if epsilon is not None else None,
        regions=_regions(raw), model=_model(raw.get("model")),
    )


def _model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not MODEL_RE.match(value):
        raise InvalidRequest("model must be an installed model's digest: 64 lower-case hex "
                             "digits, as 'sov-node models list' prints it")
    return value


def _regions(raw: dict[str, Any]) -> tuple[str, ...]:
    regions = _list(raw, "regions", MAX_REGIONS)
    if not all(isinstance(r, str) and 0 < len(r) <= 64 for r in regions):
        raise InvalidRequest("regions must be a list of region labels, e.g. [\"eu-west\"]")
    return tuple(regions)


def _number_or_text(token: str) -> Scalar:
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token


FILTER_RE = re.compile(
    r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(not\s+in|in|==|!=|<>|<=|>=|=|<|>)\s*(.+?)\s*$",
    re.IGNORECASE,
)


def parse_filter_text(text: str) -> dict[str, Any]:
    """Parse a command-line filter such as ``age >= 30`` or ``job in (admin., services)``."""
    match = FILTER_RE.match(text)
    if not match:
        raise InvalidRequest(f"cannot parse filter {text[:60]!r}: write COLUMN OP VALUE, e.g. "
                             "'age >= 30' or 'region in (north, south)'")
    column, op_text, rest = match.groups()
    op = OPERATORS[" ".join(op_text.lower().split())]
    if op in ("in", "not_in"):
        inner = rest.strip()
        if not (inner.startswith("(") and inner.endswith(")")):
            raise InvalidRequest("an 'in' filter lists values in parentheses: 'x in (a, b)'")
        lexer = shlex.shlex(inner[1:-1], posix=True, punctuation_chars=",")
        lexer.whitespace_split = True
        values = [_number_or_text(t) for t in _tokens(lexer)]
        return {"column": column, "op": op, "value": values}
    value = _tokens(_plain_lexer(rest))[0] if rest[:1] in "\"'" else rest
    return {"column": column, "op": op, "value": _number_or_text(value)}


def _plain_lexer(text: str) -> shlex.shlex:
    """A lexer splitting like ``shlex.split`` (no '#' comments)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.commenters = ""
    return lexer


def _tokens(lexer: shlex.shlex) -> list[str]:
    """The lexer's tokens without commas; an unbalanced quote is the caller's error, not ours."""
    lexer.whitespace_split = True
    try:
        return [token for token in lexer if token != ","]
    except ValueError:  # shlex: "No closing quotation" / "No escaped character"
        raise InvalidRequest("a filter value has an unbalanced quote: close it, e.g. "
                             "\"job = 'blue-collar'\"") from None
