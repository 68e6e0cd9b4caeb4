"""The Python API: vectorize_image, vectorize_text, search (Vector, Hit, rank), and duplicate_groups.

Each input is validated exactly as in the job; a bad one raises EmbeddingError carrying its error code.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from embedding.config import Config
from embedding.errors import ConfigError, EmbeddingError, ErrorCode
from embedding.fetch.sources import check_size, fetch
from embedding.fetch.uripolicy import SourceSettings, resolve_uri
from embedding.index.duplicate_groups import duplicate_groups
from embedding.index.filters import All, Clause, Filter, equalities, every
from embedding.index.ranking import Hit, Vector, pool_size, rank, ranked
from embedding.index.search import Index
from embedding.index.where import parse_where
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess
from embedding.media.text import TextLimits, validate_text
from embedding.models.identity import SEARCH_FIELDS, check_same, identity_for

if TYPE_CHECKING:
    from embedding.stages.encode import Encoder


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
    where: str | Filter | None = None,
    dedup: bool | None = None,
) -> list[Hit]:
    """Top results for a text, an image (path, URL or bytes, with image=True) or a vector.

    The query is embedded with the index's own model version; a Vector of another version is refused.
    `where` (a filter, or its text as `--where` takes it: embedding.index.where) and `filters` (the
    equality form {"column": "value"}) narrow the search to the rows that pass both, before the cut to
    `top`. `dedup` (default search.dedup) folds near-duplicates into the better result (`Hit.similar`).
    An image path or URL follows the source policy of `source`, as in `vectorize_image`. `sink`: search
    the table of the config's sink of that name instead of the index (exact search there, unless the
    sink has a vector index), ranked alike.
    """
    condition = every(equalities(filters), parse_where(where) if isinstance(where, str) else where)
    if sink is not None:
        return _search_sink(query, cfg, sink, top, condition, image, source, dedup)
    index = index or Index.for_version(cfg.output.root, cfg.model.version, cfg.output.storage_options)
    version = index.manifest.model_version
    if version == cfg.model.version:
        where = f"the index of model version '{version}' under {cfg.output.root}"
        check_same(index.manifest.identity, identity_for(cfg), where, SEARCH_FIELDS)
    if isinstance(query, Vector):
        index.check_version(query.model_version)
    vector, text = _query_vector(query, cfg, version, image, source)
    return rank(index, vector, cfg, top, condition, text, dedup)


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


def _search_sink(
    query: str | Vector | bytes | os.PathLike,
    cfg: Config,
    name: str,
    top: int | None,
    condition: Filter | None,
    image: bool,
    source: SourceSettings | None,
    dedup: bool | None,
) -> list[Hit]:
    """`search` against a sink's table of cfg.model.version, with the same relevance formula."""
    from embedding.sinks.deliver import open_sink

    if dedup:
        raise ConfigError("dedup: a sink's search does not fold near-duplicates; search the index for that")
    filters = _sink_equalities(condition)
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
        found = sink.nearest(vector.values, pool_size(cfg, top, text, grouping), filters)
    finally:
        sink.close()
    return ranked(found, cfg, top, text, grouping)


def _sink_equalities(condition: Filter | None) -> dict[str, str]:
    """A filter as a sink's search takes it: equalities of columns to values, all required."""
    parts = condition.parts if isinstance(condition, All) else (condition,) if condition else ()
    if not all(isinstance(p, Clause) and p.op == "eq" and isinstance(p.value, str) for p in parts):
        raise ConfigError("filters on a sink's search: COLUMN=VALUE equalities only (the index takes any)")
    return {p.column: str(p.value) for p in parts if isinstance(p, Clause)}


__all__ = [
    "Hit",
    "Vector",
    "duplicate_groups",
    "encoder_for",
    "rank",
    "search",
    "vectorize_image",
    "vectorize_text",
]
