"""Fetching image bytes through fsspec (local, file://, s3://, gs://, http(s)://) or from inline bytes.

Every read is bounded: at most the size limit plus one byte of an object is read, each attempt has a
timeout, and transient failures are retried a bounded number of times. Failures become EmbeddingErrors
with the codes of DESIGN.md, so the caller can turn them into error rows.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import fsspec

from embedding.config import FetchConfig
from embedding.errors import TRANSIENT_CODES, EmbeddingError, ErrorCode

INLINE = "inline"


@dataclass(frozen=True)
class SourceSettings:
    """What a fetch needs: config sections flattened to plain values (cheap to ship to Ray workers)."""

    allowed_schemes: tuple[str, ...]
    max_bytes: int
    fetch: FetchConfig
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def scheme_of(uri: str) -> str:
    """The protocol of a URI; plain paths are "file"."""
    parsed = urlparse(uri)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a Windows drive letter is a path
        return "file"
    return parsed.scheme.lower()


def check_scheme(uri: str, allowed: tuple[str, ...] | list[str]) -> str:
    """Raise InvalidManifestRow for a scheme outside the allowlist; returns the scheme."""
    scheme = scheme_of(uri)
    if scheme not in allowed:
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW,
            f"scheme '{scheme}' of {uri!r} is not allowed (input.allowed_schemes: {', '.join(allowed)})",
        )
    return scheme


def check_size(num_bytes: int, max_bytes: int, where: str) -> None:
    """Raise InvalidImageSize unless the object is under the byte limit (counted on the client)."""
    if num_bytes >= max_bytes:
        size = f"{num_bytes} bytes" if num_bytes == max_bytes else f"more than {max_bytes} bytes"
        raise EmbeddingError(
            ErrorCode.INVALID_IMAGE_SIZE, f"{where} has {size}; images must be under {max_bytes} bytes"
        )


def _filesystem(scheme: str, settings: SourceSettings) -> fsspec.AbstractFileSystem:
    options = dict(settings.storage_options.get(scheme, {}))
    timeout = settings.fetch.timeout_s
    if scheme in ("http", "https"):
        import aiohttp

        client = dict(options.pop("client_kwargs", {}))
        client.setdefault(
            "timeout", aiohttp.ClientTimeout(total=timeout, sock_connect=timeout, sock_read=timeout)
        )
        options["client_kwargs"] = client
    elif scheme in ("s3", "s3a"):
        config = dict(options.pop("config_kwargs", {}))
        config.setdefault("connect_timeout", timeout)
        config.setdefault("read_timeout", timeout)
        config.setdefault("retries", {"max_attempts": 1})  # our own loop retries
        options["config_kwargs"] = config
    return fsspec.filesystem(scheme, **options)  # fsspec caches instances per options


def _read_once(uri: str, scheme: str, settings: SourceSettings) -> bytes:
    fs = _filesystem(scheme, settings)
    path = uri if scheme != "file" else uri.removeprefix("file://")
    # HTTP: stream the body with one GET (block_size=0); the dummy size skips fsspec's HEAD probe, which
    # would report any failure (a 503 too) as a missing file.
    kwargs = {"block_size": 0, "size": 1} if scheme in ("http", "https") else {}
    with fs.open(path, "rb", **kwargs) as f:
        return _read_at_most(f, settings.max_bytes + 1)


def _read_at_most(f, limit: int) -> bytes:
    """Read until EOF or `limit` bytes, whichever comes first (streams may return short reads)."""
    parts, size = [], 0
    while size < limit:
        chunk = f.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _classify(exc: BaseException, uri: str) -> EmbeddingError:
    """Map a library exception to an error code; transient ones are FetchFailed or Timeout."""
    if isinstance(exc, EmbeddingError):
        return exc
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return EmbeddingError(ErrorCode.NOT_FOUND, f"{uri} does not exist")
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, TimeoutError | cf.TimeoutError) or "Timeout" in name or "timed out" in text.lower():
        return EmbeddingError(ErrorCode.TIMEOUT, f"reading {uri} timed out ({name})")
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if status == 404 or ("404" in text and "Not Found" in text):
        return EmbeddingError(ErrorCode.NOT_FOUND, f"{uri} does not exist (HTTP 404)")
    return EmbeddingError(ErrorCode.FETCH_FAILED, f"reading {uri} failed: {name}: {text[:300]}")


def fetch(uri: str, settings: SourceSettings, pool: cf.Executor | None = None) -> tuple[bytes, int]:
    """Read the bytes of one image; returns (bytes, attempts). Raises EmbeddingError.

    Each attempt runs under a deadline of fetch.timeout_s (enforced here as well as by the library, so a
    stalled server cannot hold a worker); transient errors are retried with exponential backoff.
    """
    scheme = check_scheme(uri, settings.allowed_schemes)
    cfg = settings.fetch
    attempts = 0
    own_pool = pool is None
    pool = pool or cf.ThreadPoolExecutor(max_workers=1)
    try:
        while True:
            attempts += 1
            future = pool.submit(_read_once, uri, scheme, settings)
            try:
                data = future.result(timeout=cfg.timeout_s)
            except BaseException as exc:
                error = _classify(exc, uri)
                if error.code not in TRANSIENT_CODES or attempts > cfg.retries:
                    error.attempts = attempts
                    raise error from None
                time.sleep(cfg.backoff_s * 2 ** (attempts - 1))
                continue
            check_size(len(data), settings.max_bytes, uri)
            return data, attempts
    finally:
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)
