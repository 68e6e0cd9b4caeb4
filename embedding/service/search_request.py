"""The body of `POST /retrieval:search`, checked: exactly one query and its options.

    {"text": "a red circle"}                      a query text (1 to 70 words) of the index's model version
    {"url": "https://..."}                        an image by URL (http, https, s3 or gs)
    {"image": "<base64>"}                         an image's bytes
    {"vector": [...], "modelVersion": "<v>"}      a ready vector and the version that made it
    {"imageId": "<id>"}                           an indexed image's stored vector ("more like this");
                                                  a video's: with "frameIndex", that frame's
  with optional "top" (default search.top), "skip" (for pages), "filters" ({"column": "value"}: a list
  column matches when it contains the value) and "relevanceWeight" (default search.relevance_weight).

The index searched is the version named by the `model-version` (or `modelVersion`) query parameter, else
the body's `modelVersion`, else the default. A vector of another version than the index's is refused.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

from embedding.config import Config
from embedding.errors import EmbeddingError
from embedding.fetch.sources import check_size
from embedding.service.wire import INVALID_ARGUMENT, from_embedding_error, invalid, model_version

QUERY_KINDS = {"text": "text", "url": "url", "image": "image", "vector": "vector", "imageId": "image_id"}
OPTIONS = {"top", "skip", "filters", "relevanceWeight", "modelVersion", "frameIndex"}


@dataclass
class SearchRequest:
    index_version: str
    kind: str  # text, url, image, vector or image_id
    value: Any  # the text, URL, image bytes, vector (list of floats) or image id
    top: int
    skip: int = 0
    filters: dict[str, str] = field(default_factory=dict)
    weight: float | None = None
    vector_version: str | None = None
    frame_index: int | None = None  # with image_id: one frame of a video


def _integer(payload: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = payload.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(INVALID_ARGUMENT, f"'{name}' must be an integer from {low} to {high}")
    return value


def _filters(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise invalid(INVALID_ARGUMENT, "'filters' must map column names to string values")
    return value


def _weight(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise invalid(INVALID_ARGUMENT, "'relevanceWeight' must be a number from 0 to 1")
    return float(value)


def _query_value(kind: str, value: Any, max_image_bytes: int) -> Any:
    if kind in ("text", "url", "image_id"):
        if not isinstance(value, str):
            raise invalid(INVALID_ARGUMENT, f"'{kind}' must be a string")
        return value
    if kind == "image":
        if not isinstance(value, str):
            raise invalid(INVALID_ARGUMENT, "'image' must be the image's bytes in base64")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise invalid(INVALID_ARGUMENT, "'image' is not valid base64") from None
        try:
            check_size(len(data), max_image_bytes, "the image")  # InvalidImageSize, as for a raw body
        except EmbeddingError as exc:
            raise from_embedding_error(exc) from None
        return data
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        or not all(math.isfinite(x) for x in value)
    ):
        raise invalid(INVALID_ARGUMENT, "'vector' must be a non-empty list of finite numbers")
    return value


def parse_search(
    payload: dict[str, Any], query: dict[str, str], served: list[str], default: str, cfg: Config
) -> SearchRequest:
    """Check a search body (and the query parameters); raises ApiError 400 naming what is wrong."""
    unknown = set(payload) - set(QUERY_KINDS) - OPTIONS
    if unknown:
        raise invalid(INVALID_ARGUMENT, f"unknown field(s) {', '.join(sorted(unknown))}")
    given = [name for name in QUERY_KINDS if payload.get(name) is not None]
    if len(given) != 1:
        raise invalid(INVALID_ARGUMENT, f"give exactly one of {', '.join(QUERY_KINDS)}; got {len(given)}")
    kind = QUERY_KINDS[given[0]]
    value = _query_value(kind, payload[given[0]], cfg.limits.max_image_bytes)
    named = payload.get("modelVersion")
    if named is not None and not isinstance(named, str):
        raise invalid(INVALID_ARGUMENT, "'modelVersion' must be a string")
    vector_version = None
    if kind == "vector":
        if not named:
            raise invalid(INVALID_ARGUMENT, "a 'vector' query needs the 'modelVersion' that made it")
        vector_version = named
        # The index is the one the query parameters name; without them, the vector's own version.
        if not (query.get("model-version") or query.get("modelVersion")):
            query = {"model-version": named}
        named = None
    max_top = cfg.service.max_top
    top = _integer(payload, "top", cfg.search.top, 1, max_top)
    return SearchRequest(
        index_version=model_version(query, served, default, named),
        kind=kind,
        value=value,
        top=top,
        skip=_integer(payload, "skip", 0, 0, max_top - top),
        filters=_filters(payload.get("filters")),
        weight=_weight(payload.get("relevanceWeight")),
        vector_version=vector_version,
        frame_index=_integer(payload, "frameIndex", None, 0, 1 << 30) if "frameIndex" in payload else None,
    )
