"""The Python API for single items: vectorize_image, vectorize_text, and search.

Each input is validated exactly as in the job; a bad one raises EmbeddingError carrying its error code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from embedding.config import Config
from embedding.errors import ConfigError, EmbeddingError, ErrorCode
from embedding.fetch.sources import check_size, fetch
from embedding.fetch.uripolicy import SourceSettings, resolve_uri
from embedding.index.relevance import metadata_score, relevance
from embedding.index.search import Index
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess
from embedding.media.text import TextLimits, validate_text
from embedding.models.identity import SEARCH_FIELDS, check_same, identity_for

if TYPE_CHECKING:
    from embedding.stages.encode import Encoder


@dataclass(frozen=True)
class Vector:
    """A unit vector and the model version whose space it lives in."""

    values: np.ndarray
    model_version: str


@dataclass(frozen=True)
class Hit:
    """One result: an image, a frame of a video (`metadata` has its frame_time_s), or a video's segment."""

    image_id: str  # the image's id, or the video's (its manifest row's id)
    uri: str | None
    cosine: float
    metadata_score: float
    relevance: float
    metadata: dict[str, Any]
    segment: dict[str, Any] | None = None  # a video result: start_s, end_s, frame_time_s, frame_index, frames

    def to_dict(self) -> dict[str, Any]:
        out = {
            "image_id": self.image_id,
            "uri": self.uri,
            "cosine": round(self.cosine, 6),
            "metadata_score": round(self.metadata_score, 6),
            "relevance": round(self.relevance, 6),
            **{k: v for k, v in self.metadata.items() if k not in ("image_id", "uri")},
        }
        if self.segment is not None:
            out["video"] = self.segment
        return out


@lru_cache(maxsize=4)
def _encoder(version: str, cfg_json: str) -> Encoder:
    from embedding.stages.encode import Encoder  # torch loads with the first model, not with this module

    cfg = Config.model_validate_json(cfg_json)
    return Encoder(version, cfg.model, cfg.inference)


def encoder_for(cfg: Config, version: str | None = None) -> Encoder:
    """The model of a version, loaded once per process."""
    return _encoder(version or cfg.model.version, cfg.model_dump_json())


def vectorize_text(text: str, cfg: Config | None = None, version: str | None = None) -> Vector:
    """One text (1 to 70 words) -> its unit vector. Raises EmbeddingError(InvalidText)."""
    cfg = cfg or Config()
    validate_text(text, TextLimits(cfg.limits.min_text_words, cfg.limits.max_text_words))
    encoder = encoder_for(cfg, version)
    return checked_vector(encoder.encode_texts([text])[0], encoder.version)


def vectorize_image(
    image: str | bytes | os.PathLike,
    cfg: Config | None = None,
    version: str | None = None,
    source: SourceSettings | None = None,
) -> Vector:
    """One image (a path, a URL or the file's bytes) -> its unit vector. Raises EmbeddingError.

    A path or URL follows the source policy of `source`: by default that of the config's own user, who
    may name local files (the command line); URLs obey the network rules either way. Pass
    `SourceSettings.untrusted(cfg)` for a path or URL that comes from someone else (no local files).
    """
    cfg = cfg or Config()
    limits = cfg.limits
    if isinstance(image, bytes):
        check_size(len(image), limits.max_image_bytes, "the image")
        data = image
    else:  # before the model loads: a refused source costs nothing
        source = source or SourceSettings.from_config(cfg)
        data, _ = fetch(resolve_uri(os.fspath(image), None, source), source)
    encoder = encoder_for(cfg, version)
    pixels = decode(data, preprocess_for(encoder, cfg), ImageLimits.from_config(cfg)).pixels
    return checked_vector(encoder.encode_pixels(pixels[None])[0], encoder.version)


def preprocess_for(encoder: Encoder, cfg: Config) -> Preprocess:
    """The model version's preprocessing with the config's own choices (draft gap, alpha background)."""
    return encoder.loaded.preprocess.with_choices(cfg.preprocess)


def checked_vector(values: np.ndarray, version: str) -> Vector:
    if not np.isfinite(values).all():
        raise EmbeddingError(ErrorCode.EMBEDDING_NOT_FINITE, "the model returned NaN or infinity")
    return Vector(values, version)


def search(
    query: str | Vector | bytes | os.PathLike,
    cfg: Config,
    top: int | None = None,
    filters: dict[str, str] | None = None,
    image: bool = False,
    index: Index | None = None,
    source: SourceSettings | None = None,
    sink: str | None = None,
) -> list[Hit]:
    """Top results for a text, an image (path, URL or bytes, with image=True) or a vector.

    The query is embedded with the index's own model version; a Vector of another version is refused.
    Filters on carried metadata apply before the cut to `top`. An image path or URL follows the source
    policy of `source`, as in `vectorize_image`. `sink`: search the table of the config's sink of that
    name instead of the index (exact search there, unless the sink has a vector index), ranked alike.
    """
    if sink is not None:
        return _search_sink(query, cfg, sink, top, filters, image, source)
    index = index or Index.for_version(cfg.output.root, cfg.model.version, cfg.output.storage_options)
    version = index.manifest.model_version
    if version == cfg.model.version:
        where = f"the index of model version '{version}' under {cfg.output.root}"
        check_same(index.manifest.identity, identity_for(cfg), where, SEARCH_FIELDS)
    if isinstance(query, Vector):
        index.check_version(query.model_version)
    vector, text = _query_vector(query, cfg, version, image, source)
    return rank(index, vector, cfg, top, filters, text)


def _query_vector(
    query: str | Vector | bytes | os.PathLike,
    cfg: Config,
    version: str,
    image: bool,
    source: SourceSettings | None,
) -> tuple[Vector, str | None]:
    """The query as a vector of `version`, and its text when it is one (for the metadata score)."""
    if isinstance(query, Vector):
        return query, None
    if image or isinstance(query, bytes):
        return vectorize_image(query, cfg, version, source), None
    return vectorize_text(str(query), cfg, version), str(query)


def rank(
    index: Index,
    vector: Vector,
    cfg: Config,
    top: int | None = None,
    filters: dict[str, str] | None = None,
    text: str | None = None,
) -> list[Hit]:
    """The ranked results of a ready query vector (`text`: the query text it was made from, if any).

    `search` and the service both rank through here, so their results are the same.
    """
    index.check_version(vector.model_version)
    top = top or cfg.search.top
    grouping = cfg.search.group_videos and "frame_time_s" in index.manifest.metadata_columns
    pool = _pool(cfg, top, text, grouping)
    found = [(c.cosine, index.metadata(c)) for c in index.nearest(vector.values, pool, filters)]
    return _ranked(found, cfg, top, text, grouping)


def _pool(cfg: Config, top: int, text: str | None, grouping: bool) -> int:
    """How many cosine candidates relevance re-orders: weight 0 keeps the cosine order. Grouping frames
    into segments needs a pool well above `top`, or one video's frames would fill it."""
    pool = max(top, cfg.search.pool) if (cfg.search.relevance_weight > 0 and text) or grouping else top
    return max(pool, 10 * top) if grouping else pool


def _ranked(
    found: list[tuple[float, dict[str, Any]]], cfg: Config, top: int, text: str | None, grouping: bool
) -> list[Hit]:
    """Hits of (cosine, metadata) candidates, by relevance (cosine and metadata score), cut to `top`."""
    weight = cfg.search.relevance_weight
    hits = []
    for cosine, meta in found:
        if meta.get("frame_time_s") is None:
            meta = {k: v for k, v in meta.items() if k not in ("frame_time_s", "frame_index")}
        score = metadata_score(text, meta.get("caption"), meta.get("tags")) if text else 0.0
        hits.append(
            Hit(
                str(meta.get("image_id")),
                meta.get("uri"),
                cosine,
                score,
                relevance(cosine, score, weight),
                meta,
            )
        )
    if grouping:
        hits = _segments(hits, cfg)
    hits.sort(key=lambda h: (-h.relevance, -h.cosine))
    return hits[:top]


def _segments(hits: list[Hit], cfg: Config) -> list[Hit]:
    """Frames of a video grouped into segments (embedding.index.segments); images as they are."""
    from embedding.index.segments import FrameHit, Segment, group_segments, segment_gap_s

    frames = [
        FrameHit(
            h.image_id,
            h.cosine,
            h.metadata_score,
            h.relevance,
            h.metadata.get("frame_time_s"),
            h.metadata.get("frame_index"),
            {**h.metadata, "uri": h.uri},
        )
        for h in hits
    ]
    images = {h.image_id: h for h in hits if h.metadata.get("frame_time_s") is None}
    out = []
    for result in group_segments(frames, cfg.video.segment_margin, segment_gap_s(cfg.video)):
        if isinstance(result, Segment):
            meta = {k: v for k, v in result.fields.items() if k not in ("frame_time_s", "frame_index", "uri")}
            span = {
                k: v
                for k, v in result.to_dict().items()
                if k in ("start_s", "end_s", "frame_time_s", "frame_index", "frames")
            }
            out.append(
                Hit(
                    result.video_id,
                    result.fields.get("uri"),
                    result.cosine,
                    result.metadata_score,
                    result.relevance,
                    meta,
                    span,
                )
            )
        else:
            out.append(images[result.item_id])
    return out


def _search_sink(
    query: str | Vector | bytes | os.PathLike,
    cfg: Config,
    name: str,
    top: int | None,
    filters: dict[str, str] | None,
    image: bool,
    source: SourceSettings | None,
) -> list[Hit]:
    """`search` against a sink's table of cfg.model.version, with the same relevance formula."""
    from embedding.sinks.deliver import open_sink

    config = next((s for s in cfg.sinks if s.name == name), None)
    if config is None:
        raise ConfigError(f"no sink named {name} (sinks: {', '.join(s.name for s in cfg.sinks) or 'none'})")
    version = cfg.model.version
    if isinstance(query, Vector) and query.model_version != version:
        raise ConfigError(f"the query is of model version '{query.model_version}', the sink's is '{version}'")
    vector, text = _query_vector(query, cfg, version, image, source)
    top = top or cfg.search.top
    grouping = cfg.search.group_videos
    sink = open_sink(config, version)
    try:
        found = sink.nearest(vector.values, _pool(cfg, top, text, grouping), filters or {})
    finally:
        sink.close()
    return _ranked(found, cfg, top, text, grouping)
