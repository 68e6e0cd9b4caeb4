import pytest

from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.text import TextLimits, validate_text

LIMITS = TextLimits()


@pytest.mark.parametrize("words", [1, 2, 70])
def test_texts_within_limits_pass(words: int) -> None:
    text = " ".join(["word"] * words)
    assert validate_text(text, LIMITS) == text


@pytest.mark.parametrize("text", ["", "   ", " ".join(["w"] * 71), None, 42])
def test_texts_outside_limits_are_invalid(text: object) -> None:
    with pytest.raises(EmbeddingError) as info:
        validate_text(text, LIMITS)
    assert info.value.code == ErrorCode.INVALID_TEXT


def test_words_are_whitespace_separated() -> None:
    assert validate_text("un\tcercle\nrouge", TextLimits(max_words=3))
    with pytest.raises(EmbeddingError):
        validate_text("a b c d", TextLimits(max_words=3))
