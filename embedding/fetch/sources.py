"""Fetching image bytes (local, file://, s3://, gs://, http(s)://) under the source policy.

What a URI may name is the policy of embedding.fetch.uripolicy (with the `SourceSettings` that carry it);
where HTTP(S) may connect is embedding.fetch.netpolicy's, applied to every hop by embedding.fetch.http.

Every read is bounded: at most the size limit plus one byte is read, and each attempt runs on a thread of
its own under a deadline that nobody waits past (`deadline`), so a read that never returns costs a Timeout
row, never a hung task. Local reads open regular files only: a FIFO, a device, a socket or a directory is
refused before anything could block on it. Failures become EmbeddingErrors with the codes of README.md.
"""

from __future__ import annotations

import os
import stat
import time
from functools import lru_cache
from typing import TYPE_CHECKING

import fsspec

from embedding.errors import TRANSIENT_CODES, EmbeddingError, ErrorCode
from embedding.fetch import deadline, http
from embedding.fetch.netpolicy import Network, parse_networks
from embedding.fetch.uripolicy import (
    SourceSettings,
    check_scheme,
    local_path,
    refuse_local,
)
from embedding.redact import redact_text, strip_userinfo

if TYPE_CHECKING:
    import concurrent.futures as cf


_LOCAL_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


def check_size(num_bytes: int, max_bytes: int, where: str) -> None:
    """Raise InvalidImageSize unless the object is under the byte limit (counted on the client)."""
    if num_bytes >= max_bytes:
        size = f"{num_bytes} bytes" if num_bytes == max_bytes else f"more than {max_bytes} bytes"
        raise EmbeddingError(
            ErrorCode.INVALID_IMAGE_SIZE,
            f"{strip_userinfo(where)} has {size}; images must be under {max_bytes} bytes",
        )


def _filesystem(scheme: str, settings: SourceSettings) -> fsspec.AbstractFileSystem:
    options = dict(settings.storage_options.get(scheme, {}))
    timeout = settings.fetch.timeout_s
    if scheme in ("s3", "s3a"):
        config = dict(options.pop("config_kwargs", {}))
        config.setdefault("connect_timeout", timeout)
        config.setdefault("read_timeout", timeout)
        config.setdefault("retries", {"max_attempts": 1})  # our own loop retries
        options["config_kwargs"] = config
    elif scheme in ("gs", "gcs"):
        options.setdefault("requests_timeout", timeout)  # each HTTP request of gcsfs
        options.setdefault("timeout", timeout)  # each blocking call into gcsfs's event loop
    return fsspec.filesystem(scheme, **options)  # fsspec caches instances per options


_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _not_regular(path: str, mode: int) -> EmbeddingError:
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    return EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"{path} is not a regular file (it is a {kind})")


def _read_local(path: str, max_bytes: int) -> bytes:
    """A regular local file, at most max_bytes + 1 of it; never blocks in open() on a FIFO or device."""
    info = os.stat(path)  # before open: a tape device rewinds, a FIFO blocks, on open alone
    if not stat.S_ISREG(info.st_mode):
        raise _not_regular(path, info.st_mode)
    check_size(info.st_size, max_bytes, path)
    fd = os.open(path, _LOCAL_OPEN_FLAGS)
    try:
        info = os.fstat(fd)  # the file opened, should it have been swapped since the stat
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path, info.st_mode)
        parts, size, limit = [], 0, max_bytes + 1
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


@lru_cache(maxsize=64)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(cidrs)


def _read_once(uri: str, scheme: str, settings: SourceSettings, attempt: deadline.Attempt) -> bytes:
    cfg = settings.fetch
    if scheme == "file":
        return _read_local(local_path(uri), settings.max_bytes)
    if scheme in ("http", "https"):
        policy = http.HttpPolicy(
            allowed_schemes=settings.allowed_schemes,
            networks=networks(settings.allowed_networks),
            max_redirects=cfg.max_redirects,
            headers=http.header_pairs(settings.storage_options.get(scheme)),
        )
        return http.get(uri, policy, settings.max_bytes, time.monotonic() + cfg.timeout_s, attempt)
    with _filesystem(scheme, settings).open(uri, "rb") as f:
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


def _status(exc: Exception) -> int | None:
    for name in ("status", "status_code", "code"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return value if isinstance(value, int) else None
    return None


def classify(exc: Exception, shown: str) -> EmbeddingError:
    """Map a library exception to an error code (Timeout and FetchFailed are the transient ones)."""
    if isinstance(exc, EmbeddingError):
        return exc
    name, text = type(exc).__name__, redact_text(str(exc))[:300]
    if isinstance(exc, deadline.TooManyStuck):
        return EmbeddingError(ErrorCode.FETCH_FAILED, f"reading {shown} was not started: {text}")
    if isinstance(exc, TimeoutError) or "Timeout" in name or "timed out" in text.lower():
        return EmbeddingError(ErrorCode.TIMEOUT, f"reading {shown} timed out ({name}: {text})")
    if isinstance(exc, IsADirectoryError):
        return EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"{shown} is not a regular file (a directory)")
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return EmbeddingError(ErrorCode.NOT_FOUND, f"{shown} does not exist")
    status = _status(exc)
    forbidden = text.startswith("Forbidden") or "AccessDenied" in text or "Access Denied" in text
    if isinstance(exc, PermissionError) or status in (401, 403) or forbidden:
        return EmbeddingError(ErrorCode.ACCESS_DENIED, f"reading {shown} is not permitted ({name}: {text})")
    if status in (404, 410) or ("404" in text and "Not Found" in text):
        return EmbeddingError(ErrorCode.NOT_FOUND, f"{shown} does not exist (HTTP {status or 404})")
    return EmbeddingError(ErrorCode.FETCH_FAILED, f"reading {shown} failed: {name}: {text}")


def fetch(uri: str, settings: SourceSettings, pool: cf.Executor | None = None) -> tuple[bytes, int]:
    """Read the bytes of one image; returns (bytes, attempts). Raises EmbeddingError.

    Each attempt runs under a deadline of fetch.timeout_s on a daemon thread of its own (module
    docstring); transient errors (Timeout, FetchFailed) are retried with exponential backoff, so the call
    returns within about timeout_s x (retries + 1) plus the backoff. `pool` is ignored: it is accepted
    for callers of the old signature, and a shared pool is exactly what stuck reads must not fill.
    """
    del pool
    shown = strip_userinfo(uri)
    scheme = check_scheme(uri, settings.allowed_schemes)
    if scheme == "file" and not settings.allow_local:
        raise refuse_local(uri, remote_manifest=False)
    cfg = settings.fetch
    attempts = 0
    while True:
        attempts += 1
        try:
            data = deadline.run(
                lambda attempt: _read_once(uri, scheme, settings, attempt),
                cfg.timeout_s,
                cfg.max_stuck_reads,
                name=f"fetch-{scheme}",
            )
        except Exception as exc:  # never BaseException: Ctrl-C and Ray's cancellation propagate
            error = classify(exc, shown)
            if error.code not in TRANSIENT_CODES or attempts > cfg.retries:
                error.attempts = attempts
                raise error from None
            time.sleep(cfg.backoff_s * 2 ** (attempts - 1))
            continue
        check_size(len(data), settings.max_bytes, shown)
        return data, attempts
