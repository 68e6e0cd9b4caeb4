"""The body of POST /retrieval:search: one query, its options, and which index it searches."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from embedding.config import Config
from embedding.index.filters import All, Clause
from embedding.service.search_request import MAX_FRAME_INDEX, frame_index_param, parse_search
from embedding.service.wire import ApiError

SERVED = ["demo", "other"]
CFG = Config.model_validate({"limits": {"max_image_bytes": 100}, "service": {"max_top": 200}})


def parse(body: dict, query: dict | None = None):
    return parse_search(body, query or {}, SERVED, "demo", CFG)


def test_queries_and_options() -> None:
    text = parse({"text": "a cat", "top": 5, "skip": 10, "filters": {"tags": "red"}, "relevanceWeight": 0})
    assert (text.kind, text.value, text.top, text.skip, text.filter, text.weight) == (
        "text",
        "a cat",
        5,
        10,
        Clause("tags", "eq", "red"),
        0.0,
    )
    every_form = parse(
        {"text": "x", "filters": {"tags": "red"}, "where": "year > 2020", "filter": {"field": "a", "in": [1]}}
    )
    assert every_form.filter == All(
        (Clause("tags", "eq", "red"), Clause("a", "in", (1,)), Clause("year", "gt", 2020))
    )
    assert parse({"text": "x", "dedup": True}).dedup is True and parse({"text": "x"}).dedup is None
    assert text.index_version == "demo" and parse({"text": "x"}).top == CFG.search.top
    assert parse({"image": base64.b64encode(b"abc").decode()}).value == b"abc"
    assert parse({"imageId": "s-1"}, {"modelVersion": "other"}).index_version == "other"
    assert parse({"url": "https://x/y.jpg", "modelVersion": "other"}).index_version == "other"


def test_a_vector_searches_its_own_version_unless_the_query_names_one() -> None:
    vector = parse({"vector": [0.1, 0.2], "modelVersion": "other"})
    assert (vector.index_version, vector.vector_version) == ("other", "other")
    mixed = parse({"vector": [0.1, 0.2], "modelVersion": "other"}, {"model-version": "demo"})
    assert (mixed.index_version, mixed.vector_version) == ("demo", "other")  # refused by the index
    # The vector travels as the index compares it: float32.
    assert vector.value.dtype == np.float32 and vector.value.tolist() == pytest.approx([0.1, 0.2])
    assert parse({"vector": [0, 3e38, -1], "modelVersion": "demo"}).value[1] == np.float32(3e38)


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
        {"text": "a", "top": 10**30},
        {"text": "a", "top": 5.0},
        {"text": "a", "top": float("inf")},
        {"text": "a", "skip": -(10**30)},
        {"text": "a", "relevanceWeight": float("nan")},
        {"text": "a", "relevanceWeight": float("inf")},
        {"text": "a", "relevanceWeight": 10**400},
        {"imageId": "v", "frameIndex": 10**30},
        {"imageId": "v", "frameIndex": MAX_FRAME_INDEX + 1},
        {"imageId": "v", "frameIndex": 1.5},
        {"imageId": "v", "frameIndex": None},
        {"image": "not base64!"},
        {"image": base64.b64encode(b"x" * 100).decode()},
        {"text": "a", "modelVersion": "nope"},
    ],
)
def test_bad_bodies_are_400(body: dict) -> None:
    with pytest.raises(ApiError) as info:
        parse(body)
    assert info.value.status == 400 and info.value.code == "InvalidRequest"


@pytest.mark.parametrize(
    ("vector", "says"),
    [
        ([0.5, 1e39], "'vector'[1] is 1e+39: every value must be finite as a float32"),  # finite in float64
        ([-1e39, 0.5], "'vector'[0] is -1e+39"),
        ([0.5, float("inf")], "'vector'[1] is inf"),
        ([1, 10**39], "'vector'[1] is 10000"),  # an int beyond float32
        ([1, 10**400], "'vector'[1] is too large for a float32"),  # an int beyond any float
        ([0, 0.0, -0.0], "'vector' is all zeros"),
        ([1e-46, 0], "'vector' is all zeros"),  # 0 once it is float32
        ([3e38, 3e38], "'vector' is too long"),  # each value finite, its scores would not be
        ([[0.5], 0.5], "'vector' must be a non-empty list of numbers"),
        ([True, 0.5], "'vector' must be a non-empty list of numbers"),
    ],
)
def test_vectors_the_index_cannot_compare_are_400(vector: list, says: str) -> None:
    with pytest.raises(ApiError) as info:
        parse({"vector": vector, "modelVersion": "demo"})
    assert (info.value.status, info.value.inner[0]) == (400, "InvalidArgument")
    assert says in info.value.message


def test_the_frame_index_parameter() -> None:
    assert frame_index_param(None) is None
    assert frame_index_param("0") == 0 and frame_index_param(str(MAX_FRAME_INDEX)) == MAX_FRAME_INDEX
    for text in ("", "-1", "1.5", "x", "²", "١", "9" * 30, str(MAX_FRAME_INDEX + 1), " 1"):
        with pytest.raises(ApiError) as info:
            frame_index_param(text)
        assert (info.value.status, info.value.inner[0]) == (400, "InvalidArgument")
        assert "'frameIndex' (query parameter) must be a whole number" in info.value.message


def test_a_filter_on_uri_is_refused_while_results_hide_uris() -> None:
    for body in (
        {"filters": {"uri": "/srv/images/a.jpg"}},
        {"where": "tags = a or not uri = '/srv/images/a.jpg'"},
        {"filter": {"not": {"field": "uri", "exists": True}}},
    ):
        with pytest.raises(ApiError, match="filter on 'uri'") as refused:
            parse({"text": "x", **body})
        assert refused.value.status == 400
    shown = CFG.model_copy(update={"service": CFG.service.model_copy(update={"result_uri": "manifest"})})
    query = parse_search({"text": "x", "filters": {"uri": "/srv/a.jpg"}}, {}, SERVED, "demo", shown)
    assert query.filter == Clause("uri", "eq", "/srv/a.jpg")
