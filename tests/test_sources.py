from pathlib import Path

import pytest

from embedding.config import FetchConfig
from embedding.errors import EmbeddingError, ErrorCode
from embedding.sources import SourceSettings, check_scheme, fetch, scheme_of

ALL = ("file", "s3", "gs", "http", "https", "inline")


def settings(max_bytes: int = 1000, **fetch_kwargs) -> SourceSettings:
    return SourceSettings(allowed_schemes=ALL, max_bytes=max_bytes, fetch=FetchConfig(**fetch_kwargs))


def test_schemes() -> None:
    assert scheme_of("/a/b.jpg") == "file"
    assert scheme_of("file:///a/b.jpg") == "file"
    assert scheme_of("S3://bucket/k.jpg") == "s3"
    assert scheme_of("https://x/y.png") == "https"
    with pytest.raises(EmbeddingError) as info:
        check_scheme("ftp://host/a.jpg", ALL)
    assert info.value.code == ErrorCode.INVALID_MANIFEST_ROW


def test_local_paths_and_file_urls(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 10)
    assert fetch(str(path), settings()) == (b"x" * 10, 1)
    assert fetch(f"file://{path}", settings())[0] == b"x" * 10


def test_missing_file_is_not_found_without_retries(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingError) as info:
        fetch(str(tmp_path / "absent.jpg"), settings(retries=3))
    assert info.value.code == ErrorCode.NOT_FOUND and info.value.attempts == 1


def test_size_limit_reads_at_most_limit_plus_one(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(EmbeddingError) as info:
        fetch(str(path), settings(max_bytes=1000))
    assert info.value.code == ErrorCode.INVALID_IMAGE_SIZE
    assert "more than 1000 bytes" in info.value.message
    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"x" * 999)
    assert len(fetch(str(exact), settings(max_bytes=1000))[0]) == 999
