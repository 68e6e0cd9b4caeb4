"""Ranking the candidates of a search: relevance (cosine and metadata score), video frames grouped into
segments, near-duplicates folded.

The Python API's `search`, `embedding search` and the service's search deployment all rank through `rank`,
so their results are the same.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from embedding.config import Config
from embedding.index.filters import Filter
from embedding.index.relevance import metadata_score, relevance
from embedding.index.search import Index

DEDUP_POOL = 3  # candidates per result asked for when near-duplicates are folded


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
    similar: tuple[str, ...] = ()  # near-duplicates folded into this result (dedup), best first

    def to_dict(self) -> dict[str, Any]:
        out = {
            "image_id": self.image_id,
            "uri": self.uri,
            "cosine": round(self.cosine, 6),
            "metadata_score": round(self.metadata_score, 6),
            "relevance": round(self.relevance, 6),
            **{k: plain(v) for k, v in self.metadata.items() if k not in ("image_id", "uri")},
        }
        if self.segment is not None:
            out["video"] = self.segment
        if self.similar:
            out["similar"] = list(self.similar)
        return out


def plain(value: Any) -> Any:
    """A carried value as JSON holds it: dates and times in ISO form (lists of them too)."""
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def rank(
    index: Index,
    vector: Vector,
    cfg: Config,
    top: int | None = None,
    where: Filter | None = None,
    text: str | None = None,
    dedup: bool | None = None,
) -> list[Hit]:
    """The ranked results of a ready query vector (`text`: the query text it was made from, if any),
    among the rows that pass `where`, near-duplicates folded with `dedup` (default search.dedup).

    `search` and the service both rank through here, so their results are the same.
    """
    index.check_version(vector.model_version)
    top = top or cfg.search.top
    dedup = cfg.search.dedup if dedup is None else dedup
    grouping = cfg.search.group_videos and "frame_time_s" in index.manifest.metadata_columns
    pool = pool_size(cfg, top, text, grouping)
    if dedup:  # folded copies leave room: candidates beyond top fill it
        pool = max(pool, DEDUP_POOL * top)
    candidates = index.nearest(vector.values, pool, where)
    found = [(c.cosine, index.metadata(c)) for c in candidates]
    hits = ranked(found, cfg, pool if dedup else top, text, grouping)
    if dedup:
        stored = {_frame_key(index.metadata(c)): index.stored(c) for c in candidates}
        hits = _folded(hits, stored, cfg.search.dedup_cosine)
    return hits[:top]


def _frame_key(meta: dict[str, Any]) -> tuple[str, int | None]:
    """A candidate's key: its id, and its frame's index for a frame of a video."""
    frame = meta.get("frame_index") if meta.get("frame_time_s") is not None else None
    return str(meta.get("image_id")), frame


def _folded(hits: list[Hit], stored: dict[tuple[str, int | None], np.ndarray], cosine: float) -> list[Hit]:
    """Hits in order, each near-duplicate (a stored vector within `cosine` of a better kept hit's) folded
    into that hit's `similar`. A video's segment stands for its best frame, so copies across videos fold."""
    keys = [(h.image_id, (h.segment or h.metadata).get("frame_index")) for h in hits]
    vectors = np.stack([stored[k] for k in keys]) if hits else np.empty((0, 0), np.float32)
    kept: list[int] = []
    folded: dict[int, list[str]] = {}
    for n in range(len(hits)):
        if kept:
            scores = vectors[kept] @ vectors[n]
            best = int(np.argmax(scores))
            if scores[best] >= cosine:
                folded.setdefault(kept[best], []).append(hits[n].image_id)
                continue
        kept.append(n)
    return [replace(hits[n], similar=tuple(folded.get(n, ()))) for n in kept]


def pool_size(cfg: Config, top: int, text: str | None, grouping: bool) -> int:
    """How many cosine candidates relevance re-orders: weight 0 keeps the cosine order. Grouping frames
    into segments needs a pool well above `top`, or one video's frames would fill it."""
    pool = max(top, cfg.search.pool) if (cfg.search.relevance_weight > 0 and text) or grouping else top
    return max(pool, 10 * top) if grouping else pool


def ranked(
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
