"""Filters on carried columns: one model for the CLI's `--where`, the Python API, HTTP and the page.

A filter is a tree of `Clause`s (a column, an operator, a value) joined by `All`, `AnyOf` and `Not`. It is
typed by the column it names when it meets an index: the value is read as the column's Arrow type (a date
for a date column, a number for a number column), and an operator that does not apply to that type is
refused, naming the column. Values are data, never code: the tree is evaluated with Arrow's compute
functions over the index's metadata table, and nothing is ever built from a value as text.

Operators (the JSON form's names; the text form is in `embedding.index.where`):
  eq, ne, in            any column (`eq` on a list column: it contains the value; `ne`: it does not)
  lt, lte, gt, gte      numbers, dates, timestamps (and ranges: two of them on one column)
  contains, containsAny list columns
  exists                a value is there (a list: not empty); `exists: false`, it is not

Comparisons follow SQL: a row without a value is neither `< 10` nor `not < 10`.

The JSON form, as `POST /retrieval:search` takes it:
  {"and": [F, ...]}  {"or": [F, ...]}  {"not": F}
  {"field": "price", "gte": 1, "lt": 10}    several operators in one leaf are all required
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from embedding.errors import ConfigError

ORDERED = ("lt", "lte", "gt", "gte")
OPERATORS = ("eq", "ne", "in", *ORDERED, "contains", "containsAny", "exists")
LISTED = ("in", "containsAny")  # operators whose value is a list of values
MAX_NODES = 1_000  # clauses and joins in one filter: a bound on the work a request can ask for
MAX_DEPTH = 32
MAX_VALUES = 10_000  # values of one `in` or `containsAny`


class FilterError(ConfigError):
    """A filter that cannot apply: malformed, an unknown column, an operator or a value of the wrong type."""


Scalar = str | int | float | bool


@dataclass(frozen=True)
class Clause:
    column: str
    op: str
    value: Scalar | tuple[Scalar, ...]  # a tuple for `in` and `containsAny`; a bool for `exists`


@dataclass(frozen=True)
class All:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    part: Filter


Filter = Clause | All | AnyOf | Not


def clause(column: str, op: str, value: Any) -> Clause:
    """A checked clause: a known operator with a value of the right shape (types come with the column)."""
    if not isinstance(column, str) or not column:
        raise FilterError("a filter's field must be a column name")
    if op not in OPERATORS:
        raise FilterError(f"filter on '{column}': unknown operator '{op}' (have {', '.join(OPERATORS)})")
    if op in LISTED:
        if not isinstance(value, list | tuple) or not value:
            raise FilterError(f"filter on '{column}': '{op}' takes a non-empty list of values")
        if len(value) > MAX_VALUES:
            raise FilterError(f"filter on '{column}': '{op}' takes at most {MAX_VALUES} values")
        return Clause(column, op, tuple(_scalar(column, op, v) for v in value))
    if op == "exists":
        if not isinstance(value, bool):
            raise FilterError(f"filter on '{column}': 'exists' takes true or false")
        return Clause(column, op, value)
    return Clause(column, op, _scalar(column, op, value))


def _scalar(column: str, op: str, value: Any) -> Scalar:
    if isinstance(value, str | bool | int | float) and value == value:  # NaN is no value
        return value
    raise FilterError(f"filter on '{column}': '{op}' takes a string, number or boolean, not {value!r}")


def every(*parts: Filter | None) -> Filter | None:
    """All of these filters (None where none is given)."""
    given = tuple(p for p in parts if p is not None)
    if not given:
        return None
    return given[0] if len(given) == 1 else All(given)


def equalities(mapping: dict[str, str] | None) -> Filter | None:
    """The equality form `{"column": "value"}` (a list column: it contains the value)."""
    return every(*(clause(column, "eq", value) for column, value in (mapping or {}).items()))


def from_json(data: Any, depth: int = 0) -> Filter:
    """A filter from its JSON form (see the module docstring); FilterError says what is wrong."""
    if depth > MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {MAX_DEPTH}")
    if not isinstance(data, dict) or not data:
        raise FilterError(
            "a filter is an object: {'field': ..., 'eq': ...}, {'and': [...]}, {'or': [...]} or {'not': ...}"
        )
    if "field" not in data:
        if len(data) != 1:
            got = ", ".join(sorted(data))
            raise FilterError(f"a filter joins with exactly one of and, or, not; got {got}")
        ((join, value),) = data.items()
        if join == "not":
            return Not(from_json(value, depth + 1))
        if join not in ("and", "or") or not isinstance(value, list) or not value:
            raise FilterError(f"'{join}': a filter joins with 'and' or 'or' (a non-empty list) or 'not'")
        parts = tuple(from_json(item, depth + 1) for item in value)
        return All(parts) if join == "and" else AnyOf(parts)
    column = data["field"]
    ops = [k for k in data if k != "field"]
    if not ops:
        raise FilterError(f"filter on '{column}': no operator (have {', '.join(OPERATORS)})")
    return every(*(clause(column, op, data[op]) for op in ops)) or Clause(column, "exists", True)


def to_json(f: Filter) -> dict[str, Any]:
    """The JSON form of a filter (from_json(to_json(f)) == f)."""
    if isinstance(f, All):
        return {"and": [to_json(p) for p in f.parts]}
    if isinstance(f, AnyOf):
        return {"or": [to_json(p) for p in f.parts]}
    if isinstance(f, Not):
        return {"not": to_json(f.part)}
    return {"field": f.column, f.op: list(f.value) if isinstance(f.value, tuple) else f.value}


def key(f: Filter) -> str:
    """A canonical text of a filter: equal filters, equal keys (what caches of its rows are keyed by)."""
    return json.dumps(to_json(f), sort_keys=True, separators=(",", ":"))


def clauses(f: Filter) -> list[Clause]:
    """Every clause of a filter."""
    if isinstance(f, Clause):
        return [f]
    if isinstance(f, Not):
        return clauses(f.part)
    return [c for part in f.parts for c in clauses(part)]


def size(f: Filter) -> int:
    """Clauses and joins: what evaluating a filter costs, before values."""
    if isinstance(f, Clause):
        return 1
    if isinstance(f, Not):
        return 1 + size(f.part)
    return 1 + sum(size(p) for p in f.parts)


def checked_size(f: Filter) -> Filter:
    if size(f) > MAX_NODES:
        raise FilterError(f"a filter has at most {MAX_NODES} clauses and joins")
    return f
