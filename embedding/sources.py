"""Fetching image bytes (local, file://, s3://, gs://, http(s)://, inline) under the source policy.

What a URI may name depends on who wrote it (`resolve_uri`): the user's own local manifest may name local
files anywhere; a manifest on an object store or HTTP may name object-store and HTTP(S) URIs only, and no
relative URI may leave its folder; HTTP(S) never reaches non-public addresses (`netpolicy`); inline bytes
obey `input.allowed_schemes` like any scheme (`check_inline`). Refusals are InvalidManifestRow errors
whose message starts with the rule's name.

Every read is bounded: at most the size limit plus one byte is read, and each attempt runs on a thread of
its own under a deadline that nobody waits past (`deadline`), so a read that never returns costs a Timeout
row, never a hung task. Local reads open regular files only: a FIFO, a device, a socket or a directory is
refused before anything could block on it. Failures become EmbeddingErrors with the codes of README.md.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import fsspec

from embedding import deadline, httpget
from embedding.config import FetchConfig
from embedding.errors import TRANSIENT_CODES, EmbeddingError, ErrorCode
from embedding.netpolicy import Network, parse_networks
from embedding.redact import redact_text, strip_userinfo

if TYPE_CHECKING:
    import concurrent.futures as cf

    from embedding.config import Config

INLINE = "inline"
_LOCAL_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True)
class SourceSettings:
    """What a fetch needs: config sections flattened to plain values (cheap to ship to Ray workers).

    `allow_local` says whether URIs handled with these settings may name local files at all (False for
    requests from the network); `allow_local_from_remote_manifest` opens local files to manifests that
    are not on local disk (`input.allow_local_from_remote_manifest`).
    """

    allowed_schemes: tuple[str, ...]
    max_bytes: int
    fetch: FetchConfig
    storage_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    allow_local: bool = True
    allow_local_from_remote_manifest: bool = False

    @classmethod
    def from_config(cls, cfg: Config, manifest_is_local: bool = True) -> SourceSettings:
        """The settings of a job or a command-line call (trusted config; `manifest_is_local` False for the
        rows of a manifest on an object store or HTTP)."""
        opened = cfg.input.allow_local_from_remote_manifest
        return cls(
            allowed_schemes=tuple(cfg.input.allowed_schemes),
            max_bytes=cfg.limits.max_image_bytes,
            fetch=cfg.fetch,
            storage_options=cfg.input.storage_options,
            allow_local=manifest_is_local or opened,
            allow_local_from_remote_manifest=opened,
        )

    @classmethod
    def untrusted(cls, cfg: Config) -> SourceSettings:
        """For URIs from the network (the online service): no local files at all, whatever the config."""
        settings = cls.from_config(cfg)
        schemes = tuple(s for s in settings.allowed_schemes if s != "file")
        return replace(
            settings, allowed_schemes=schemes, allow_local=False, allow_local_from_remote_manifest=False
        )

    def for_manifest(self, manifest_folder: str | None) -> SourceSettings:
        """These settings for the rows of a manifest in `manifest_folder` (None: no manifest)."""
        if manifest_folder is None or is_local(manifest_folder) or self.allow_local_from_remote_manifest:
            return self
        return replace(self, allow_local=False)

    @property
    def allowed_networks(self) -> tuple[str, ...]:
        return tuple(self.fetch.allowed_networks)


def scheme_of(uri: str) -> str:
    """The protocol of a URI; plain paths are "file"."""
    parsed = urlparse(uri)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a Windows drive letter is a path
        return "file"
    return parsed.scheme.lower()


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def check_scheme(uri: str, allowed: tuple[str, ...] | list[str]) -> str:
    """Raise InvalidManifestRow for a scheme outside the allowlist; returns the scheme."""
    scheme = scheme_of(uri)
    if scheme not in allowed:
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW,
            f"scheme rule: scheme '{scheme}' of {strip_userinfo(uri)!r} is not allowed "
            f"(input.allowed_schemes: {', '.join(allowed)})",
        )
    return scheme


def check_inline(settings: SourceSettings) -> None:
    """Raise InvalidManifestRow unless inline image bytes are allowed ("inline" in allowed_schemes)."""
    if INLINE not in settings.allowed_schemes:
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW,
            "inline rule: inline image bytes are not allowed (input.allowed_schemes has no 'inline')",
        )


def check_size(num_bytes: int, max_bytes: int, where: str) -> None:
    """Raise InvalidImageSize unless the object is under the byte limit (counted on the client)."""
    if num_bytes >= max_bytes:
        size = f"{num_bytes} bytes" if num_bytes == max_bytes else f"more than {max_bytes} bytes"
        raise EmbeddingError(
            ErrorCode.INVALID_IMAGE_SIZE,
            f"{strip_userinfo(where)} has {size}; images must be under {max_bytes} bytes",
        )


def _escapes(relative: str) -> bool:
    """Whether a relative path climbs above its starting folder (percent-encoded dots count too)."""
    for text in {relative, unquote(relative)}:
        depth = 0
        for segment in re.split(r"[/\\]", text):
            if segment == "..":
                depth -= 1
                if depth < 0:
                    return True
            elif segment not in ("", "."):
                depth += 1
    return False


def resolve_uri(uri: object, manifest_folder: str | None, settings: SourceSettings) -> str:
    """The URI a manifest row names, checked against the source policy and joined to the manifest's folder.

    `manifest_folder` is the folder of the manifest file (None for a URI given directly, as by the API).
    Raises EmbeddingError(InvalidManifestRow, "<rule>: ...") for a value that is not a string, a scheme
    outside input.allowed_schemes, a local path or file:// URI where local files are not allowed, and a
    relative URI of a remote manifest that climbs out of the manifest's folder.
    """
    if not isinstance(uri, str):
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW, f"uri rule: uri must be a string, got {type(uri).__name__}"
        )
    if not uri.strip():
        raise EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, "uri rule: the uri is empty")
    remote_manifest = manifest_folder is not None and not is_local(manifest_folder)
    relative = is_local(uri) and uri[:5].lower() != "file:" and not uri.startswith(("/", "\\"))
    resolved = uri
    if relative and manifest_folder is not None:
        if remote_manifest and _escapes(uri):
            raise EmbeddingError(
                ErrorCode.INVALID_MANIFEST_ROW,
                f"folder rule: relative uri {uri!r} leaves the folder of its manifest {manifest_folder}",
            )
        joined = posixpath.join(manifest_folder, uri)
        resolved = joined if remote_manifest else posixpath.normpath(joined)
    check_scheme(resolved, settings.allowed_schemes)
    if is_local(resolved):
        local_path(resolved)  # a file:// URI naming another host is refused here
        if not settings.for_manifest(manifest_folder).allow_local:
            raise _local_refused(resolved, remote_manifest)
    return resolved


def _local_refused(uri: str, remote_manifest: bool) -> EmbeddingError:
    why = (
        "a manifest on an object store or HTTP may not name local files "
        "(input.allow_local_from_remote_manifest opens them)"
        if remote_manifest
        else "local files are not allowed for this source"
    )
    return EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"local-file rule: {strip_userinfo(uri)!r}: {why}")


def local_path(uri: str) -> str:
    """The path of a plain path or file:// URI (which may only name this machine)."""
    if uri[:5].lower() != "file:":
        return uri
    rest = uri[5:]
    if not rest.startswith("//"):
        return rest
    host, _, path = rest[2:].partition("/")
    if host.lower() not in ("", "localhost"):
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW,
            f"local-file rule: {strip_userinfo(uri)!r} names host {strip_userinfo(host)!r}; "
            "file:// URIs name local files only",
        )
    return "/" + path


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
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(cidrs)


def _read_once(uri: str, scheme: str, settings: SourceSettings, attempt: deadline.Attempt) -> bytes:
    cfg = settings.fetch
    if scheme == "file":
        return _read_local(local_path(uri), settings.max_bytes)
    if scheme in ("http", "https"):
        policy = httpget.HttpPolicy(
            allowed_schemes=settings.allowed_schemes,
            networks=_networks(settings.allowed_networks),
            max_redirects=cfg.max_redirects,
            headers=httpget.header_pairs(settings.storage_options.get(scheme)),
        )
        return httpget.get(uri, policy, settings.max_bytes, time.monotonic() + cfg.timeout_s, attempt)
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


def _classify(exc: Exception, shown: str) -> EmbeddingError:
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
        raise _local_refused(uri, remote_manifest=False)
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
            error = _classify(exc, shown)
            if error.code not in TRANSIENT_CODES or attempts > cfg.retries:
                error.attempts = attempts
                raise error from None
            time.sleep(cfg.backoff_s * 2 ** (attempts - 1))
            continue
        check_size(len(data), settings.max_bytes, shown)
        return data, attempts
