"""The relevance score of a search result.

    relevance = (1 - w) * (cosine + 1) / 2  +  w * metadata_score

`(cosine + 1) / 2` maps cosine similarity to [0, 1]. `metadata_score` (in [0, 1]) is the share of the query's
content words that appear in the row's caption or tags (case-insensitive; a few common words of English,
French, Spanish and German are ignored); image queries have metadata_score 0. `w` is `search.relevance_weight`
(default 0.2); with w = 0 results come in pure cosine order. As with the hosted APIs, relevance ranks the
results of one query: it is not comparable across queries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "at",
        "with",
        "and",
        "or",
        "to",
        "for",
        "photo",
        "image",
        "picture",
        "showing",
        "un",
        "une",
        "le",
        "la",
        "les",
        "des",
        "du",
        "de",
        "d",
        "l",
        "sur",
        "avec",
        "et",
        "ou",
        "montrant",
        "el",
        "los",
        "las",
        "unos",
        "unas",
        "del",
        "sobre",
        "con",
        "y",
        "o",
        "que",
        "muestra",
        "foto",
        "imagen",
        "ein",
        "eine",
        "einer",
        "einem",
        "einen",
        "der",
        "die",
        "das",
        "den",
        "dem",
        "des",
        "auf",
        "mit",
        "und",
        "oder",
        "bild",
        "foto",
    ]
)


def words(text: str | None) -> list[str]:
    return _WORD.findall(text.lower()) if text else []


def metadata_score(query: str, caption: str | None, tags: Iterable[str] | None) -> float:
    """Share of the query's content words found in the caption or tags."""
    wanted = [w for w in words(query) if w not in STOPWORDS] or words(query)
    if not wanted:
        return 0.0
    present = set(words(caption)) | {w for tag in tags or () for w in words(tag)}
    return sum(w in present for w in wanted) / len(wanted)


def relevance(cosine: float, meta_score: float, weight: float) -> float:
    return (1.0 - weight) * (cosine + 1.0) / 2.0 + weight * meta_score
