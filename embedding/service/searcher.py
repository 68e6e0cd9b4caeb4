"""The search deployment: one per served model version, holding its index and ranking ready vectors.

Ranking is `embedding.api.rank`, the code `embedding search` ranks with (same relevance formula, same
filters, same refusal of another version's vectors), so both give the same ids, order and scores.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from ray import serve

from embedding.api import Vector, rank
from embedding.config import Config
from embedding.errors import ConfigError
from embedding.index.search import Index, VersionMismatch
from embedding.service.live_index import LiveIndex, find_row, stored_vector
from embedding.service.wire import (
    IMAGE_NOT_FOUND,
    INDEX_NOT_FOUND,
    INVALID_ARGUMENT,
    VERSION_MISMATCH,
    ApiError,
    camel_hit,
    invalid,
    reply,
)


def _missing(inner: str, message: str) -> ApiError:
    return ApiError(404, "NotFound", message, (inner, message))


@serve.deployment
class SearchDeployment:
    """The index of one model version: searches, image records (for thumbnails) and the index's state."""

    def __init__(self, cfg_json: str, version: str):
        self.cfg = Config.model_validate_json(cfg_json)
        self.version = version
        self.live = LiveIndex(self.cfg, version)
        self.live.watch(self.cfg.service.index_poll_s)

    def _index(self) -> Index:
        index = self.live.index
        if index is None:
            raise _missing(
                INDEX_NOT_FOUND,
                f"model version '{self.version}' has no index yet: build it with `embedding index CONFIG` "
                f"({self.live.problem})",
            )
        return index

    async def search(self, query: dict[str, Any]) -> dict[str, Any]:
        """Rank a query: `vector` (+ `vector_version`) or `image_id` (its stored vector), with `text`
        (the query text, for the metadata score), `top`, `skip`, `filters` and `weight`."""
        try:
            return reply(await asyncio.to_thread(self._search, query))
        except ApiError as exc:
            return reply(error=exc)

    def _search(self, query: dict[str, Any]) -> dict[str, Any]:
        index = self._index()
        if query.get("image_id") is not None:
            where = find_row(index, query["image_id"], query.get("frame_index"))
            if where is None:
                raise _missing(IMAGE_NOT_FOUND, f"image '{query['image_id']}' is not in the index")
            vector = Vector(stored_vector(index, where), self.version)
        else:
            vector = Vector(np.asarray(query["vector"], dtype=np.float32), query["vector_version"])
        cfg = self.cfg
        if query.get("weight") is not None:
            search = cfg.search.model_copy(update={"relevance_weight": query["weight"]})
            cfg = cfg.model_copy(update={"search": search})
        skip = query.get("skip", 0)
        try:
            hits = rank(index, vector, cfg, skip + query["top"], query.get("filters"), query.get("text"))
        except VersionMismatch as exc:
            raise invalid(VERSION_MISMATCH, str(exc)) from None
        except ConfigError as exc:  # an unknown filter column, a vector of the wrong width
            raise invalid(INVALID_ARGUMENT, str(exc)) from None
        return {
            "modelVersion": self.version,
            "buildId": index.manifest.build_id,
            "results": [camel_hit(hit.to_dict()) for hit in hits[skip:]],
        }

    async def record(self, image_id: str, frame_index: int | None = None) -> dict[str, Any]:
        """An indexed image's metadata (`image_id`, `uri`, carried columns; a video's frame: its time
        too): the only images the service fetches for thumbnails are these."""
        try:
            index = self._index()
            where = find_row(index, image_id, frame_index)
            if where is None:
                raise _missing(IMAGE_NOT_FOUND, f"image '{image_id}' is not in the index")
            return reply(index.metadata(where))
        except ApiError as exc:
            return reply(error=exc)

    async def info(self) -> dict[str, Any]:
        """The served index: rows, build, kind, and the values its carried columns offer as filters."""
        index = self.live.index
        if index is None:
            return {"modelVersion": self.version, "index": None, "problem": self.live.problem}
        manifest = index.manifest
        return {
            "modelVersion": self.version,
            "index": {
                "rows": manifest.rows,
                "buildId": manifest.build_id,
                "builtAt": manifest.built_at,
                "kind": manifest.kind,
                "shards": len(manifest.shards),
                "metadataColumns": manifest.metadata_columns,
            },
            "filters": self.live.facets,
            "problem": self.live.problem,
        }

    async def refresh(self) -> bool:
        """Look for a rebuilt index now (the poller does it every `service.index_poll_s`)."""
        return await asyncio.to_thread(self.live.refresh)
