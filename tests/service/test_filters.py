"""Filters through the Python API, the CLI and HTTP (text and JSON forms): the same ids in the same order,
and the ones exact search over the passing rows gives, on every kind of column; bad filters are 400s that
name the column, and values with quotes, SQL and shell metacharacters are only values."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import requests
import yaml

from embedding import cli
from embedding.api import search, vectorize_text
from embedding.index.build import build_index
from embedding.index.filters import to_json
from embedding.index.where import parse_where
from tests.index.conftest import clustered, write_embeddings
from tests.service.conftest import Served, running

pytestmark = pytest.mark.integration
ROWS = 600
QUERY = "a red circle on a white background"
ODD = 'it\'s "quoted"; DROP TABLE x; -- $(rm -rf /) `id`'


def _columns() -> dict[str, pa.Array]:
    rng = np.random.default_rng(11)
    day0 = dt.date(2024, 1, 1)
    moment0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    category = rng.choice(["shoes", "bags", "hats", ODD], ROWS, p=[0.4, 0.3, 0.25, 0.05]).astype(object)
    category[::37] = None
    return {
        "category": pa.array(category, pa.string()),
        "year": pa.array(rng.integers(2015, 2025, ROWS), pa.int64()),
        "price": pa.array(np.round(rng.uniform(0, 100, ROWS), 2), pa.float64()),
        "day": pa.array([day0 + dt.timedelta(days=int(d)) for d in rng.integers(0, 366, ROWS)], pa.date32()),
        "taken_at": pa.array(
            [moment0 + dt.timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 90, ROWS)],
            pa.timestamp("us", tz="UTC"),
        ),
    }


def _tags(number: int) -> list[str]:
    colours = ["red", "blue", "green", "yellow"]
    return [colours[number % 4], colours[(number // 4) % 4], "even" if number % 2 == 0 else "odd"]


@pytest.fixture(scope="module")
def setup(served: Served, tmp_path_factory: pytest.TempPathFactory):
    """(URL, config, config file, rows) of a server on 600 synthetic rows with typed columns (flat index)."""
    folder = tmp_path_factory.mktemp("filters")
    cfg = served.config(root=folder / "out", index={"kind": "flat"}, search={"relevance_weight": 0.0})
    columns = _columns()
    vectors = clustered(ROWS, 1024, seed=12)
    tags = [_tags(n) for n in range(ROWS)]
    ids = write_embeddings(Path(cfg.output.root), vectors, units=3, tags=tags, extra=columns)
    build_index(cfg)
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    rows = pa.table({"image_id": ids, "tags": tags, **columns}).to_pylist()
    with running(cfg) as url:
        yield url, cfg, config_file, rows, vectors


CASES = [
    ("category = shoes", lambda r: r["category"] == "shoes"),
    ("category != shoes", lambda r: r["category"] not in (None, "shoes")),
    ("category in (bags, 'hats')", lambda r: r["category"] in ("bags", "hats")),
    ("not category exists", lambda r: r["category"] is None),
    ("'blue' in tags", lambda r: "blue" in r["tags"]),
    ("tags contains any (yellow, green) and tags = even", lambda r: {"yellow", "green"} & set(r["tags"])),
    ("year >= 2022", lambda r: r["year"] >= 2022),
    ("year between 2016 and 2017 or year = 2024", lambda r: 2016 <= r["year"] <= 2017 or r["year"] == 2024),
    ("price < 12.5", lambda r: r["price"] < 12.5),
    ("price > 30 and price <= 40", lambda r: 30 < r["price"] <= 40),
    (
        "day >= 2024-06-01 and day < 2024-07-01",
        lambda r: dt.date(2024, 6, 1) <= r["day"] < dt.date(2024, 7, 1),
    ),
    (
        "taken_at > 2024-03-15T12:00:00Z",
        lambda r: r["taken_at"] > dt.datetime(2024, 3, 15, 12, tzinfo=dt.UTC),
    ),
    (
        "not (category = shoes or year < 2020)",
        lambda r: r["category"] not in (None, "shoes") and r["year"] >= 2020,
    ),
]


def _expected(rows: list[dict], vectors: np.ndarray, query: np.ndarray, passes) -> list[str]:
    """Exact search over the rows that pass (the stored vectors are float16: compared as the index does)."""
    keep = [n for n, row in enumerate(rows) if passes(row)]
    stored = vectors[keep].astype(np.float16).astype(np.float32)
    order = np.lexsort((np.array(keep), -(stored @ query)))[:10]
    return [rows[keep[i]]["image_id"] for i in order]


@pytest.mark.parametrize(("where", "passes"), CASES, ids=[c[0] for c in CASES])
def test_the_api_the_cli_and_http_agree_with_exact_search(setup, capsys, where: str, passes) -> None:
    url, cfg, config_file, rows, vectors = setup
    query = vectorize_text(QUERY, cfg).values
    ids = [h.image_id for h in search(QUERY, cfg, where=where)]
    if "and tags = even" in where:
        expected = _expected(rows, vectors, query, lambda r: passes(r) and "even" in r["tags"])
    else:
        expected = _expected(rows, vectors, query, passes)
    assert ids == expected and len(ids) == 10
    capsys.readouterr()
    assert cli.main(["search", str(config_file), QUERY, "--where", where, "--json"]) == 0
    assert [h["image_id"] for h in json.loads(capsys.readouterr().out)] == ids
    by_text = requests.post(f"{url}/retrieval:search", json={"text": QUERY, "where": where}, timeout=60)
    by_json = requests.post(
        f"{url}/retrieval:search", json={"text": QUERY, "filter": to_json(parse_where(where))}, timeout=60
    )
    for answer in (by_text, by_json):
        assert answer.status_code == 200, answer.text
        assert [r["imageId"] for r in answer.json()["results"]] == ids


def test_values_with_quotes_sql_and_shell_characters_are_values(setup, capsys) -> None:
    url, cfg, config_file, rows, _ = setup
    odd = {r["image_id"] for r in rows if r["category"] == ODD}
    quoted = "category = '" + ODD.replace("\\", "\\\\").replace("'", "\\'") + "'"
    hits = search(QUERY, cfg, top=50, where=quoted)
    assert {h.image_id for h in hits} == odd
    capsys.readouterr()
    assert cli.main(["search", str(config_file), QUERY, "--top", "50", "--filter", quoted, "--json"]) == 0
    assert {h["image_id"] for h in json.loads(capsys.readouterr().out)} == odd
    body = {"text": QUERY, "top": 50, "filter": {"field": "category", "eq": ODD}}
    answer = requests.post(f"{url}/retrieval:search", json=body, timeout=60)
    assert {r["imageId"] for r in answer.json()["results"]} == odd
    legacy = requests.post(
        f"{url}/retrieval:search", json={**body, "filter": None, "filters": {"category": ODD}}
    )
    assert {r["imageId"] for r in legacy.json()["results"]} == odd


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"where": "price < cheap"}, "filter on 'price': 'cheap' is not a number"),
        ({"where": "colour = red"}, "filter on 'colour': no such column"),
        ({"where": "category < 3"}, "filter on 'category': 'lt' needs a number, date or timestamp"),
        ({"where": "price <"}, "expected a value at character 8"),
        ({"where": 5}, "'where' must be a filter expression"),
        ({"filter": {"field": "day", "gt": "someday"}}, "filter on 'day': 'someday' is not a date"),
        ({"filter": {"field": "price", "like": "%1%"}}, "unknown operator 'like'"),
        ({"filter": {"or": []}}, "'or': a filter joins"),
        ({"filters": {"price": 5}}, "'filters' must map column names to string values"),
        ({"dedup": "yes"}, "'dedup' must be true or false"),
    ],
)
def test_bad_filters_are_400_and_name_the_column(setup, capsys, body: dict, says: str) -> None:
    url, _, config_file, _, _ = setup
    answer = requests.post(f"{url}/retrieval:search", json={"text": QUERY, **body}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"]["message"]
    if isinstance(body.get("where"), str):
        assert cli.main(["search", str(config_file), QUERY, "--where", body["where"]]) == 2
        assert says in capsys.readouterr().err
