from pathlib import Path

import pytest

from embedding.config import FetchConfig
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.sources import fetch
from embedding.fetch.uripolicy import SourceSettings, check_scheme, scheme_of

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


# --- the source policy's settings, error codes, and exceptions planted in the read ---------------


def test_settings_from_the_config() -> None:
    from embedding.config import Config

    cfg = Config.model_validate(
        {"fetch": {"allowed_networks": ["10.0.0.0/8"]}, "limits": {"max_image_bytes": 1234}}
    )
    trusted = SourceSettings.from_config(cfg)
    assert trusted.allow_local and trusted.max_bytes == 1234 and trusted.allowed_networks == ("10.0.0.0/8",)
    assert not SourceSettings.from_config(cfg, manifest_is_local=False).allow_local
    assert not trusted.for_manifest("s3://bucket/set").allow_local
    assert trusted.for_manifest("/data/set").allow_local and trusted.for_manifest(None).allow_local
    opened = Config.model_validate({"input": {"allow_local_from_remote_manifest": True}})
    assert SourceSettings.from_config(opened, manifest_is_local=False).allow_local
    untrusted = SourceSettings.untrusted(opened)
    assert not untrusted.allow_local and "file" not in untrusted.allowed_schemes


def test_bad_network_ranges_are_config_errors() -> None:
    from embedding.config_file import load_config
    from embedding.errors import ConfigError

    with pytest.raises(ConfigError, match="CIDR"):
        load_config(None, ["fetch.allowed_networks=[intranet]"])
    assert load_config(None, ["fetch.allowed_networks=[10.1.2.3/8]"]).fetch.allowed_networks == ["10.0.0.0/8"]


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch):
    """Every local read raises what the test puts in `planted.error`; `planted.calls` counts reads."""
    import embedding.fetch.sources as sources

    class Plant:
        error: BaseException = RuntimeError("disk on fire")
        calls = 0

    def read(path: str, max_bytes: int) -> bytes:
        Plant.calls += 1
        raise Plant.error

    monkeypatch.setattr(sources, "_read_local", read)
    return Plant


@pytest.mark.parametrize(
    "error, code, retried",
    [
        (PermissionError(13, "Permission denied"), ErrorCode.ACCESS_DENIED, False),
        (FileNotFoundError(2, "No such file"), ErrorCode.NOT_FOUND, False),
        (IsADirectoryError(21, "Is a directory"), ErrorCode.INVALID_MANIFEST_ROW, False),
        (OSError("Forbidden: gs://bucket/x.jpg"), ErrorCode.ACCESS_DENIED, False),  # gcsfs's 403
        (RuntimeError("disk on fire"), ErrorCode.FETCH_FAILED, True),
        (OSError(5, "Input/output error"), ErrorCode.FETCH_FAILED, True),
        (TimeoutError("read timed out"), ErrorCode.TIMEOUT, True),
    ],
)
def test_read_failures_get_their_code(planted, error: Exception, code: ErrorCode, retried: bool) -> None:
    planted.error = error
    with pytest.raises(EmbeddingError) as info:
        fetch("/data/x.jpg", settings(retries=2, backoff_s=0))
    assert info.value.code == code
    assert info.value.attempts == planted.calls == (3 if retried else 1)


def test_http_statuses_of_object_stores_get_their_code() -> None:
    from embedding.fetch.sources import classify

    class StatusError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(f"status {status}")
            self.status = status

    class ClientError(Exception):  # botocore's shape
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.response = {"Error": {"Code": "403"}, "ResponseMetadata": {"HTTPStatusCode": 403}}

    assert classify(StatusError(403), "u").code == ErrorCode.ACCESS_DENIED
    assert classify(StatusError(401), "u").code == ErrorCode.ACCESS_DENIED
    assert classify(StatusError(404), "u").code == ErrorCode.NOT_FOUND
    assert classify(StatusError(503), "u").code == ErrorCode.FETCH_FAILED
    assert classify(ClientError("An error occurred (403)"), "u").code == ErrorCode.ACCESS_DENIED


def test_ctrl_c_in_a_read_propagates_and_is_not_retried(planted) -> None:
    planted.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        fetch("/data/x.jpg", settings(retries=3, backoff_s=0))
    assert planted.calls == 1


def test_credentials_never_reach_a_message(planted) -> None:
    planted.error = RuntimeError("connect to https://reader:hunter22@h/x failed")
    with pytest.raises(EmbeddingError) as info:
        fetch("/data/x.jpg", settings(retries=0))
    assert "hunter22" not in info.value.message


def test_object_store_filesystems_get_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    import embedding.fetch.sources as sources

    seen = {}
    monkeypatch.setattr(
        sources.fsspec, "filesystem", lambda scheme, **options: seen.setdefault(scheme, options)
    )
    s = SourceSettings(ALL, 1000, FetchConfig(timeout_s=7), storage_options={"gs": {"project": "p"}})
    sources._filesystem("gs", s)
    sources._filesystem("s3", s)
    assert seen["gs"] == {"project": "p", "requests_timeout": 7, "timeout": 7}
    assert seen["s3"]["config_kwargs"]["connect_timeout"] == seen["s3"]["config_kwargs"]["read_timeout"] == 7
