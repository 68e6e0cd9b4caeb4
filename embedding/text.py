"""Query and caption text: validation against the word limits, and tokenisation for a model version."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

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


def tokenize(tokenizer: Callable[[list[str]], torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
    """Token ids for a batch of texts; the tokenizer truncates to its model's context length."""
    return tokenizer(list(texts))
