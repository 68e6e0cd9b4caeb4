"""The search deployment: one per served model version, holding its index and ranking ready vectors.

Ranking is `embedding.api.rank`, the code `embedding search` ranks with (same relevance formula, same
filters, same refusal of another version's vectors), so both give the same ids, order and scores. Only the
`uri` of a result differs: `service.result_uri` says how much of it a client sees (ResultUris).
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from ray import serve

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.index.ranking import Vector, rank
from embedding.index.search import Index, VersionMismatch
from embedding.service.live_index import LiveIndex, find_row
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
from embedding.store.files import to_url
from embedding.store.manifest import list_manifest

log = logging.getLogger(__name__)


def _missing(inner: str, message: str) -> ApiError:
    return ApiError(404, "NotFound", message, (inner, message))


class ResultUris:
    """The `uri` a search result shows over HTTP (`service.result_uri`).

    The index holds the uri the job resolved: a manifest's relative path joined to the manifest file's
    folder (for a local manifest, an absolute path of the server), any other uri as the manifest had it.
    "relative" shows it relative to the folder of a manifest file of the config, else its file name alone
    (never a host, bucket, folder, credentials or query string); "manifest" shows it whole; "none": null.
    """

    def __init__(self, mode: str, folders: list[str] | None = None):
        self.mode = mode
        # The deepest folder first: a uri under two of them is shown relative to the nearer one.
        self.prefixes = sorted({f.rstrip("/") + "/" for f in folders or []}, key=len, reverse=True)

    @classmethod
    def from_config(cls, cfg: Config) -> ResultUris:
        mode = cfg.service.result_uri
        if mode != "relative":
            return cls(mode)
        try:  # only listed, never read; the folders are named as the job named them (find_files)
            listing = list_manifest(cfg.input.manifest, cfg.input.storage_options)
        except Exception as exc:  # a manifest that is gone or unreachable costs the relative form only
            log.warning("search results show their uri's file name only: %s", exc)
            return cls(mode)
        names = [info["name"] if "://" in info["name"] else to_url(fs, info["name"]) for fs, info in listing]
        return cls(mode, [posixpath.dirname(name) for name in names])

    def show(self, uri: str | None) -> str | None:
        if uri is None or self.mode == "none":
            return None
        if self.mode == "manifest":
            return uri
        if "://" in uri:  # a URL's query string and fragment may hold signatures: never shown
            uri = urlsplit(uri)._replace(query="", fragment="").geturl()
        for prefix in self.prefixes:
            if uri.startswith(prefix):
                return uri[len(prefix) :]
        path = urlsplit(uri).path if "://" in uri else uri
        return posixpath.basename(path.rstrip("/")) or None


@serve.deployment
class SearchDeployment:
    """The index of one model version: searches, image records (for thumbnails) and the index's state."""

    def __init__(self, cfg_json: str, version: str):
        self.cfg = Config.model_validate_json(cfg_json)
        self.version = version
        self.live = LiveIndex(self.cfg, version)
        self.live.watch(self.cfg.service.index_poll_s)
        self.uris = ResultUris.from_config(self.cfg)

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
        (the query text, for the metadata score), `top`, `skip`, `filter`, `dedup` and `weight`."""
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
            vector = Vector(index.stored(where), self.version)
        else:
            vector = Vector(np.asarray(query["vector"], dtype=np.float32), query["vector_version"])
        cfg = self.cfg
        if query.get("weight") is not None:
            search = cfg.search.model_copy(update={"relevance_weight": query["weight"]})
            cfg = cfg.model_copy(update={"search": search})
        skip = query.get("skip", 0)
        try:
            top, dedup = skip + query["top"], query.get("dedup")
            hits = rank(index, vector, cfg, top, query.get("filter"), query.get("text"), dedup)
        except VersionMismatch as exc:
            raise invalid(VERSION_MISMATCH, str(exc)) from None
        except ConfigError as exc:  # an unknown filter column, a vector of the wrong width
            raise invalid(INVALID_ARGUMENT, str(exc)) from None
        return {
            "modelVersion": self.version,
            "buildId": index.manifest.build_id,
            "results": [camel_hit({**hit.to_dict(), "uri": self.uris.show(hit.uri)}) for hit in hits[skip:]],
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
            "ranges": self.live.ranges,
            "problem": self.live.problem,
        }

    async def refresh(self) -> bool:
        """Look for a rebuilt index now (the poller does it every `service.index_poll_s`)."""
        return await asyncio.to_thread(self.live.refresh)
