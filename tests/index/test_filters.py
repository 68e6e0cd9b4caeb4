"""Filters: the text and JSON forms, typed evaluation over each kind of column, errors that name the column,
and a narrow filter on a 100,000-row compressed index that still returns `top` results."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embedding.config_file import load_config
from embedding.index.build import build_index
from embedding.index.filters import FilterError, from_json, to_json
from embedding.index.rowmask import mask
from embedding.index.search import Index
from embedding.index.where import parse_where
from tests.index.conftest import clustered, write_embeddings

date = dt.date


def moment(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)  # type: ignore[misc]


@pytest.fixture
def table() -> pa.Table:
    taken = [moment(2024, 1, 1, 10), None, moment(2024, 3, 1), moment(2020, 1, 1), moment(2024, 3, 1, 12)]
    return pa.table(
        {
            "category": pa.array(["a", "b", "a", None, "it's; DROP TABLE x --"]).dictionary_encode(),
            "tags": pa.array([["red", "x"], [], None, ["blue"], ["$(rm -rf /)"]]),
            "year": pa.array([2019, 2020, 2021, None, 2024], pa.int64()),
            "price": [0.5, 1.5, None, 2.0, 10.0],
            "day": pa.array([date(2024, 1, 1), date(2024, 2, 1), None, date(2023, 1, 1), date(2024, 3, 5)]),
            "taken_at": pa.array(taken, pa.timestamp("us", tz="UTC")),
            "local": pa.array([dt.datetime(2024, 1, 1, 10)] * 5, pa.timestamp("s")),
            "flag": [True, False, None, True, False],
        }
    )


@pytest.mark.parametrize(
    ("where", "rows"),
    [
        ("category = a", [0, 2]),
        ("category != a", [1, 4]),  # a row without a value is neither = nor !=
        ("category in (a, 'b')", [0, 1, 2]),
        ("category not in (a)", [1, 4]),
        ("category = 'it\\'s; DROP TABLE x --'", [4]),
        ("'red' in tags", [0]),
        ("tags = red", [0]),  # equality on a list: it contains the value
        ("tags contains '$(rm -rf /)'", [4]),
        ("tags contains any (blue, red)", [0, 3]),
        ("tags != red", [1, 3, 4]),
        ("tags exists", [0, 3, 4]),
        ("not tags exists", [1, 2]),
        ("year >= 2020", [1, 2, 4]),
        ("not year >= 2020", [0]),
        ("year between 2019 and 2020", [0, 1]),
        ("year = '2021'", [2]),  # the equality form sends numbers as text
        ("price < 1.5", [0]),
        ("price >= 2", [3, 4]),
        ("day >= 2024-01-01 and day < 2024-03-01", [0, 1]),
        ("day > 2024-02-01T00:00:00", [4]),
        ("taken_at > 2024-02-15T12:00:00Z", [2, 4]),
        ("taken_at >= 2024-03-01T11:00:00+00:00", [4]),
        ("taken_at between 2024-01-01 and 2024-01-02", [0]),
        ("local = 2024-01-01T10:00:00", [0, 1, 2, 3, 4]),
        ("flag = true", [0, 3]),
        ("(category = a or 'blue' in tags) and not year = 2021", [0]),
        ("category = a or category = b and year = 2019", [0, 2]),  # and binds first
        ("CATEGORY = a", None),  # columns are case-sensitive; keywords are not
        ("category = a AND year = 2019", [0]),
    ],
)
def test_each_operator_on_each_type(table: pa.Table, where: str, rows: list[int] | None) -> None:
    if rows is None:
        with pytest.raises(FilterError, match="'CATEGORY': no such column"):
            mask(parse_where(where), table)
        return
    parsed = parse_where(where)
    assert np.flatnonzero(mask(parsed, table)).tolist() == rows
    assert from_json(to_json(parsed)) == parsed  # the JSON form says the same
    assert np.flatnonzero(mask(from_json(to_json(parsed)), table)).tolist() == rows


def test_the_json_form(table: pa.Table) -> None:
    def rows(tree: dict) -> list[int]:
        return np.flatnonzero(mask(from_json(tree), table)).tolist()

    # Row 3 has no category: `not category = a` is unknown there, so it does not pass (as in SQL).
    not_a = {"not": {"field": "category", "eq": "a"}}
    assert rows({"and": [{"field": "price", "gte": 1, "lt": 10}, not_a]}) == [1]
    assert rows({"field": "tags", "containsAny": ["x", "blue"]}) == [0, 3]
    assert rows({"field": "year", "exists": False}) == [3]
    assert rows({"or": [{"field": "flag", "eq": True}, {"field": "price", "gt": 5}]}) == [0, 3, 4]


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("", "empty"),
        ("price <", "expected a value at character 8"),
        ("price < 1 and", "expected a column name"),
        ("(price < 1", "expected ')'"),
        ("price ~ 1", "expected an operator after 'price'"),
        ("price in ()", "expected a value"),
        ("price = 'open", 'unexpected "\'"'),
        ("price < abc", "filter on 'price': 'abc' is not a number"),
        ("category < a", "filter on 'category': 'lt' needs a number, date or timestamp; it is a string"),
        ("tags > 3", "filter on 'tags': 'gt' does not apply to a list"),
        ("year contains 3", "filter on 'year': 'contains' needs a list column"),
        ("day > yesterday", "filter on 'day': 'yesterday' is not a date"),
        ("nope = 1", "filter on 'nope': no such column"),
        ("year = 20.5", "filter on 'year': 20.5 is not a whole number"),
        ("a=1 " + "and a=1 " * 1000, "at most 1000 clauses"),
        ("price = 1 " + "and price = 1 " * 1000, "longer than 10000 characters"),
    ],
)
def test_bad_filters_say_what_and_where(table: pa.Table, where: str, says: str) -> None:
    with pytest.raises(FilterError, match=re_escape(says)):
        mask(parse_where(where), table)


@pytest.mark.parametrize(
    ("tree", "says"),
    [
        ([], "a filter is an object"),
        ({"and": []}, "'and': a filter joins"),
        ({"field": "price"}, "no operator"),
        ({"field": "price", "like": "x"}, "unknown operator 'like'"),
        ({"field": "price", "in": "x"}, "'in' takes a non-empty list"),
        ({"field": "price", "eq": {"$gt": 1}}, "takes a string, number or boolean"),
        ({"field": "price", "exists": "yes"}, "'exists' takes true or false"),
        ({"and": [{"field": "a", "eq": 1}], "or": []}, "exactly one of and, or, not"),
        ({"field": "price", "eq": float("nan")}, "takes a string, number or boolean"),
    ],
)
def test_bad_json_filters(tree: object, says: str) -> None:
    with pytest.raises(FilterError, match=re_escape(says)):
        from_json(tree)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def rare_of(meta: pa.Table) -> np.ndarray:
    return np.asarray(meta.column("label").to_numpy(zero_copy_only=False) == "rare")


def test_a_narrow_filter_on_100000_rows_still_returns_top(tmp_path: Path) -> None:
    """0.1% of a 100,000-row IVF-PQ index passes; search still returns the top 10 of them, exactly."""
    rows, dim = 100_000, 64  # a version of 64 dimensions: the index's cost, not the vectors', is tested
    settings = {"shards": 2, "factory": "'IVF256,PQ16x4'", "nprobe": 4, "rerank": 200, "self_check_texts": 0}
    version = ["model.version=tiny64", "model.versions.tiny64.architecture=demo-tiny"]
    index_settings = [f"index.{k}={v}" for k, v in settings.items()]
    cfg = load_config(
        None,
        [f"output.root={tmp_path / 'out'}", *version, f"model.versions.tiny64.dim={dim}", *index_settings],
    )
    vectors = clustered(rows, dim, seed=3, clusters=200)
    rare = np.zeros(rows, bool)
    rare[np.random.default_rng(4).choice(rows, rows // 1000, replace=False)] = True  # 100 rows
    label = pa.array(np.where(rare, "rare", "common"))
    root = Path(cfg.output.root)
    write_embeddings(root, vectors, "tiny64", units=4, tags=[[]] * rows, extra={"label": label})
    build_index(cfg)
    index = Index.for_version(cfg.output.root, "tiny64")
    # The truth from the vectors the index stores (float16), so both sides round alike.
    rare_rows = [(n, r) for n, s in enumerate(index.shards) for r in np.flatnonzero(rare_of(s.meta))]
    stored = np.stack([np.asarray(index.shards[n].vectors[r], np.float32) for n, r in rare_rows])
    for query in clustered(20, dim, seed=5, clusters=200):
        found = index.nearest(query, 10, parse_where("label = rare"))
        best = np.lexsort((np.arange(len(stored)), -(stored @ query)))[:10]
        assert [(c.shard, c.row) for c in found] == [rare_rows[i] for i in best]
        # A wide filter (half the rows) also returns 10 passing rows, re-ranked exactly.
        wide = index.nearest(query, 10, parse_where("label != rare"))
        assert len(wide) == 10 and all(index.metadata(c)["label"] == "common" for c in wide)
