"""API keys and the source policy of the URLs the service fetches."""

from __future__ import annotations

import pytest

from embedding.config import Config
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.uripolicy import check_scheme
from embedding.service.security import api_key_digests, authorized, request_key, source_settings


def test_keys_from_the_config_and_the_environment() -> None:
    cfg = Config.model_validate({"service": {"api_keys": ["one"]}})
    digests = api_key_digests(cfg.service, {"EMBEDDING_API_KEYS": " two, ,three "})
    assert len(digests) == 3 and "one" not in "".join(digests)  # digests, never the keys
    assert api_key_digests(Config().service, {}) == ()
    for headers in ({"ocp-apim-subscription-key": "two"}, {"authorization": "Bearer three"}):
        assert authorized(headers, digests)
    for headers in (
        {},
        {"ocp-apim-subscription-key": "four"},
        {"authorization": "Basic one"},
        {"authorization": "Bearer"},
    ):
        assert not authorized(headers, digests)
    assert authorized({}, ())  # no keys configured: open (and bound to 127.0.0.1)
    assert request_key({"authorization": "bearer  one "}) == "one"


def test_request_urls_never_name_local_files() -> None:
    settings = source_settings(Config(), "request")
    # http and https only: an s3:// or gs:// URL would be read with the service's own credentials
    assert settings.allowed_schemes == ("http", "https") and not settings.allow_local
    for url in (
        "/etc/passwd",
        "file:///etc/passwd",
        "relative/path.jpg",
        "inline://x",
        "ftp://host/x",
        "s3://b/k",
    ):
        with pytest.raises(EmbeddingError) as info:
            check_scheme(url, settings.allowed_schemes)
        assert info.value.code == ErrorCode.INVALID_MANIFEST_ROW
    narrowed = Config.model_validate({"input": {"allowed_schemes": ["https", "file"]}})
    assert source_settings(narrowed, "request").allowed_schemes == ("https",)


def test_thumbnails_read_under_the_jobs_policy() -> None:
    cfg = Config.model_validate({"limits": {"max_image_bytes": 1000}})
    settings = source_settings(cfg, "index")
    assert "file" in settings.allowed_schemes and "inline" not in settings.allowed_schemes
    assert settings.max_bytes == 1000 and settings.fetch == cfg.fetch
