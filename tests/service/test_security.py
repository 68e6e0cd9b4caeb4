"""API keys and the source policy of the URLs the service fetches."""

from __future__ import annotations

import pytest

from embedding.config import Config
from embedding.errors import ConfigError, EmbeddingError, ErrorCode
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


def test_keys_from_a_file_and_a_file_that_fails_closed(tmp_path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("# keys of the catalogue team\nfile-one\n\n  file-two  \n")
    cfg = Config.model_validate({"service": {"api_keys_file": str(keys)}})
    digests = api_key_digests(cfg.service, {})
    assert len(digests) == 2 and authorized({"authorization": "Bearer file-two"}, digests)
    assert not authorized({"authorization": "Bearer # keys of the catalogue team"}, digests)
    for content, says in ((None, "cannot read"), ("# none\n\n", "holds no key"), (b"\xff\xfe", "not UTF-8")):
        if content is None:
            keys.unlink()
        elif isinstance(content, bytes):
            keys.write_bytes(content)
        else:
            keys.write_text(content)
        with pytest.raises(ConfigError, match=f"service.api_keys_file: .*{says}") as info:
            api_key_digests(cfg.service, {})
        assert str(keys) in str(info.value) and "none" not in str(info.value)  # the path, not the contents


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
