"""Query and caption text: validation against the word limits (tokenizers truncate to their context)."""

from __future__ import annotations

from dataclasses import dataclass

from embedding.errors import EmbeddingError, ErrorCode


@dataclass(frozen=True)
class TextLimits:
    """Texts must have from `min_words` to `max_words` whitespace-separated words, inclusive."""

    min_words: int = 1
    max_words: int = 70


def validate_text(text: object, limits: TextLimits) -> str:
    """Return the text if it is within the limits; raise InvalidText otherwise."""
    if not isinstance(text, str):
        raise EmbeddingError(ErrorCode.INVALID_TEXT, f"text must be a string, got {type(text).__name__}")
    words = len(text.split())
    if not limits.min_words <= words <= limits.max_words:
        raise EmbeddingError(
            ErrorCode.INVALID_TEXT,
            f"text has {words} words; it must have from {limits.min_words} to {limits.max_words} words",
        )
    return text
