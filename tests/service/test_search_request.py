"""The body of POST /retrieval:search: one query, its options, and which index it searches."""

from __future__ import annotations

import base64

import pytest

from embedding.config import Config
from embedding.service.search_request import parse_search
from embedding.service.wire import ApiError

SERVED = ["demo", "other"]
CFG = Config.model_validate({"limits": {"max_image_bytes": 100}, "service": {"max_top": 200}})


def parse(body: dict, query: dict | None = None):
    return parse_search(body, query or {}, SERVED, "demo", CFG)


def test_queries_and_options() -> None:
    text = parse({"text": "a cat", "top": 5, "skip": 10, "filters": {"tags": "red"}, "relevanceWeight": 0})
    assert (text.kind, text.value, text.top, text.skip, text.filters, text.weight) == (
        "text",
        "a cat",
        5,
        10,
        {"tags": "red"},
        0.0,
    )
    assert text.index_version == "demo" and parse({"text": "x"}).top == CFG.search.top
    assert parse({"image": base64.b64encode(b"abc").decode()}).value == b"abc"
    assert parse({"imageId": "s-1"}, {"modelVersion": "other"}).index_version == "other"
    assert parse({"url": "https://x/y.jpg", "modelVersion": "other"}).index_version == "other"


def test_a_vector_searches_its_own_version_unless_the_query_names_one() -> None:
    vector = parse({"vector": [0.1, 0.2], "modelVersion": "other"})
    assert (vector.index_version, vector.vector_version) == ("other", "other")
    mixed = parse({"vector": [0.1, 0.2], "modelVersion": "other"}, {"model-version": "demo"})
    assert (mixed.index_version, mixed.vector_version) == ("demo", "other")  # refused by the index


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": "a", "url": "b"},
        {"text": 3},
        {"text": "a", "top": 0},
        {"text": "a", "top": 201},
        {"text": "a", "top": 150, "skip": 51},
        {"text": "a", "top": True},
        {"text": "a", "filters": ["tags"]},
        {"text": "a", "relevanceWeight": -0.1},
        {"text": "a", "unknown": 1},
        {"vector": [0.1]},
        {"vector": [], "modelVersion": "demo"},
        {"vector": ["x"], "modelVersion": "demo"},
        {"vector": [float("nan")], "modelVersion": "demo"},
        {"image": "not base64!"},
        {"image": base64.b64encode(b"x" * 100).decode()},
        {"text": "a", "modelVersion": "nope"},
    ],
)
def test_bad_bodies_are_400(body: dict) -> None:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.status == 400 and info.value.code == "InvalidRequest"
