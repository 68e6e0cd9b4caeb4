"""Which rows of a metadata table pass a filter: each clause typed by its column, evaluated by Arrow.

Values are read as the column's type: a number column takes numbers (or their text, as the equality form
`{"width": "640"}` sends them), a date column ISO dates, a timestamp column ISO times (without a zone:
UTC when the column has one), a string column text, a list column its elements' type. What cannot be read
so, an operator the type has no use for, and an unknown column are FilterErrors naming the column.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding.index.filters import ORDERED, All, AnyOf, Clause, Filter, FilterError, Not, Scalar

_COMPARE = {"eq": pc.equal, "ne": pc.not_equal, "lt": pc.less, "lte": pc.less_equal}
_COMPARE |= {"gt": pc.greater, "gte": pc.greater_equal}


def kind_of(data_type: pa.DataType) -> str:
    """A column's kind as filters see it: string, number, bool, date, timestamp, list or other."""
    if pa.types.is_dictionary(data_type):
        return kind_of(data_type.value_type)
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return "list"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "string"
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type):
        return "number"
    if pa.types.is_boolean(data_type):
        return "bool"
    if pa.types.is_date(data_type):
        return "date"
    if pa.types.is_timestamp(data_type):
        return "timestamp"
    return "other"


def mask(f: Filter, table: pa.Table) -> np.ndarray:
    """A boolean per row of `table`: it passes the filter."""
    result = _evaluate(f, table)
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def check(f: Filter, schema: pa.Schema) -> None:
    """Raise FilterError for a clause this schema cannot answer (run on an empty table of it)."""
    _evaluate(f, schema.empty_table())


def _evaluate(f: Filter, table: pa.Table) -> pa.ChunkedArray | pa.Array:
    if isinstance(f, All):
        result = _evaluate(f.parts[0], table)
        for part in f.parts[1:]:
            result = pc.and_kleene(result, _evaluate(part, table))
        return result
    if isinstance(f, AnyOf):
        result = _evaluate(f.parts[0], table)
        for part in f.parts[1:]:
            result = pc.or_kleene(result, _evaluate(part, table))
        return result
    if isinstance(f, Not):
        return pc.invert(_evaluate(f.part, table))
    return _clause(f, table)


def _column(c: Clause, table: pa.Table) -> pa.ChunkedArray:
    if c.column not in table.column_names:
        raise FilterError(f"filter on '{c.column}': no such column; have {', '.join(table.column_names)}")
    data = table.column(c.column)
    if pa.types.is_dictionary(data.type):
        data = data.cast(data.type.value_type)
    return data


def _clause(c: Clause, table: pa.Table) -> pa.ChunkedArray | pa.Array:
    data = _column(c, table)
    kind = kind_of(data.type)
    if c.op == "exists":
        present = pc.is_valid(data)
        if kind == "list":
            present = pc.and_(present, pc.greater(pc.fill_null(pc.list_value_length(data), 0), 0))
        return present if c.value else pc.invert(present)
    if kind == "list":
        return _list_clause(c, data)
    if kind == "other":
        raise FilterError(f"filter on '{c.column}': its type {data.type} takes no filter")
    if c.op in ("contains", "containsAny"):
        raise FilterError(f"filter on '{c.column}': '{c.op}' needs a list column; it is a {kind}")
    if c.op in ORDERED and kind not in ("number", "date", "timestamp"):
        raise FilterError(
            f"filter on '{c.column}': '{c.op}' needs a number, date or timestamp; it is a {kind}"
        )
    if isinstance(c.value, tuple):  # `in`
        values = pa.array([_typed(c, v, data.type) for v in c.value], data.type)
        found = pc.is_in(data, value_set=values)
        return pc.if_else(pc.is_valid(data), found, pa.scalar(None, pa.bool_()))
    return _COMPARE[c.op](data, pa.scalar(_typed(c, c.value, data.type), data.type))


def _list_clause(c: Clause, data: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A list column: eq and contains (it holds the value), ne (it does not), containsAny (any of them)."""
    if c.op not in ("eq", "ne", "contains", "containsAny", "in"):
        raise FilterError(f"filter on '{c.column}': '{c.op}' does not apply to a list column (use contains)")
    element = data.type.value_type
    if pa.types.is_dictionary(element):
        element = element.value_type
    wanted = c.value if isinstance(c.value, tuple) else (c.value,)
    values = pa.array([_typed(c, v, element) for v in wanted], element)
    data = data.combine_chunks() if isinstance(data, pa.ChunkedArray) else data
    flat = pc.list_flatten(data)
    if pa.types.is_dictionary(flat.type):
        flat = flat.cast(element)
    hits = np.zeros(len(data), dtype=bool)
    matches = pc.fill_null(pc.is_in(flat, value_set=values), False).to_numpy(zero_copy_only=False)
    hits[np.unique(pc.list_parent_indices(data).to_numpy()[matches])] = True
    found = pc.if_else(pc.is_valid(data), pa.array(hits), pa.scalar(None, pa.bool_()))
    return pc.invert(found) if c.op == "ne" else found


def _typed(c: Clause, value: Scalar, data_type: pa.DataType) -> Any:
    """A filter value as a value of the column's type, or a FilterError naming the column."""
    kind = kind_of(data_type)
    try:
        if kind == "string":
            return value if isinstance(value, str) else _text(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
        elif kind == "number" and not isinstance(value, bool):
            number = float(value) if isinstance(value, str) else value
            if pa.types.is_integer(data_type) and float(number).is_integer():
                return int(number)
            if pa.types.is_floating(data_type):
                return float(number)
            # A fraction against integers: compare as the column would never hold it.
            raise FilterError(f"filter on '{c.column}': {value!r} is not a whole number")
        elif kind == "date" and isinstance(value, str):
            return dt.date.fromisoformat(value[:10]) if len(value) > 10 else dt.date.fromisoformat(value)
        elif kind == "timestamp" and isinstance(value, str):
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
            if data_type.tz is not None and moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            elif data_type.tz is None and moment.tzinfo is not None:
                moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
            return moment
    except (ValueError, OverflowError):
        pass
    raise FilterError(
        f"filter on '{c.column}': {value!r} is not a {kind} value (the column holds {data_type})"
    )


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
