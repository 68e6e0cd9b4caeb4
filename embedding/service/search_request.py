"""The body of `POST /retrieval:search`, checked: exactly one query and its options.

    {"text": "a red circle"}                      a query text (1 to 70 words) of the index's model version
    {"url": "https://..."}                        an image by URL (http, https, s3 or gs)
    {"image": "<base64>"}                         an image's bytes
    {"vector": [...], "modelVersion": "<v>"}      a ready vector and the version that made it
    {"imageId": "<id>"}                           an indexed image's stored vector ("more like this");
                                                  a video's: with "frameIndex", that frame's
  with optional "top" (default search.top), "skip" (for pages), "relevanceWeight" (default
  search.relevance_weight), "dedup" (fold near-duplicates into the better result; default search.dedup),
  and filters, all of which a result must pass:
    "filter": {"and": [{"field": "price", "lt": 10}, {"field": "tags", "contains": "red"}]}   (JSON form)
    "where": "price < 10 and 'red' in tags"                                           (text form)
    "filters": {"column": "value"}                    (equality; a list column: it contains the value)
  (embedding.index.filters and embedding.index.where define both forms).

Numbers are checked as the index will hold them: a vector must be finite once it is float32 (1e39 is not)
and not all zeros, a count or a frame index a whole number within its bounds (never a float, NaN or a
30-digit integer that would overflow the index's integer columns).

The index searched is the version named by the `model-version` (or `modelVersion`) query parameter, else
the body's `modelVersion`, else the default. A vector of another version than the index's is refused.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedding.config import Config
from embedding.errors import EmbeddingError
from embedding.fetch.sources import check_size
from embedding.index.filters import Filter, FilterError, checked_size, clauses, equalities, every, from_json
from embedding.index.where import parse_where
from embedding.service.wire import INVALID_ARGUMENT, from_embedding_error, invalid, model_version

QUERY_KINDS = {"text": "text", "url": "url", "image": "image", "vector": "vector", "imageId": "image_id"}
OPTIONS = {"top", "skip", "filters", "filter", "where", "dedup", "relevanceWeight", "modelVersion"}
OPTIONS |= {"frameIndex"}
MAX_FRAME_INDEX = 1 << 30  # more frames than any video has; the index holds frame indexes as int32


@dataclass
class SearchRequest:
    index_version: str
    kind: str  # text, url, image, vector or image_id
    value: Any  # the text, URL, image bytes, vector (float32 array) or image id
    top: int
    skip: int = 0
    filter: Filter | None = None  # every filter of the request, joined
    dedup: bool | None = None
    weight: float | None = None
    vector_version: str | None = None
    frame_index: int | None = None  # with image_id: one frame of a video


def _integer(payload: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = payload.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(INVALID_ARGUMENT, f"'{name}' must be an integer from {low} to {high}")
    return value


def frame_index_param(text: str | None) -> int | None:
    """The `frameIndex` query parameter (a thumbnail's frame of a video): none, or a whole number."""
    if text is None:
        return None
    # ASCII digits only ('²' is a digit to str.isdigit, not to int), and few enough to convert at once.
    if not (text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= MAX_FRAME_INDEX):
        raise invalid(
            INVALID_ARGUMENT,
            f"'frameIndex' (query parameter) must be a whole number from 0 to {MAX_FRAME_INDEX}",
        )
    return int(text)


def _vector(value: Any) -> np.ndarray:
    """A query vector as the index compares it: float32, every value finite, not all zeros."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    ):
        raise invalid(INVALID_ARGUMENT, "'vector' must be a non-empty list of numbers")
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: refused below, by position
            vector = np.asarray(value, dtype=np.float32)
    except OverflowError:  # an integer beyond any float
        at = next(i for i, x in enumerate(value) if isinstance(x, int) and x.bit_length() > 128)
        raise invalid(INVALID_ARGUMENT, f"'vector'[{at}] is too large for a float32") from None
    bad = np.flatnonzero(~np.isfinite(vector))
    if len(bad):
        raise invalid(
            INVALID_ARGUMENT,
            f"'vector'[{bad[0]}] is {value[bad[0]]}: every value must be finite as a float32 "
            "(at most about 3.4e38 in magnitude)",
        )
    if not vector.any():
        raise invalid(INVALID_ARGUMENT, "'vector' is all zeros: it has no direction to search by")
    # Its scores against unit vectors are at most its length: one beyond float32 would make them infinite.
    if np.linalg.norm(vector.astype(np.float64)) > np.finfo(np.float32).max:
        raise invalid(INVALID_ARGUMENT, "'vector' is too long: its length must be finite as a float32")
    return vector


def _filter(payload: dict[str, Any], cfg: Config) -> Filter | None:
    """The request's filters ("filters", "filter", "where"), joined, or None."""
    mapping = payload.get("filters")
    if mapping is not None and (
        not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values())
    ):
        raise invalid(INVALID_ARGUMENT, "'filters' must map column names to string values")
    text = payload.get("where")
    if text is not None and not isinstance(text, str):
        raise invalid(INVALID_ARGUMENT, "'where' must be a filter expression as text")
    try:
        tree = payload.get("filter")
        found = every(
            equalities(mapping),
            from_json(tree) if tree is not None else None,
            parse_where(text) if text is not None else None,
        )
        found = checked_size(found) if found is not None else None
    except FilterError as exc:
        raise invalid(INVALID_ARGUMENT, str(exc)) from None
    hidden = cfg.service.result_uri != "manifest"
    if found is not None and hidden and any(c.column == "uri" for c in clauses(found)):
        # A filter on the whole uri would tell a caller whether a server path exists, which results hide.
        raise invalid(INVALID_ARGUMENT, "filter on 'uri': not offered while service.result_uri hides uris")
    return found


def _dedup(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise invalid(INVALID_ARGUMENT, "'dedup' must be true or false")
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
    return _vector(value)


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
    frame = _integer(payload, "frameIndex", None, 0, MAX_FRAME_INDEX) if "frameIndex" in payload else None
    return SearchRequest(
        index_version=model_version(query, served, default, named),
        kind=kind,
        value=value,
        top=top,
        skip=_integer(payload, "skip", 0, 0, max_top - top),
        filter=_filter(payload, cfg),
        dedup=_dedup(payload.get("dedup")),
        weight=_weight(payload.get("relevanceWeight")),
        vector_version=vector_version,
        frame_index=frame,
    )
