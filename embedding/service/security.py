"""The service's trust boundary: API keys, and the source policy for every URL the service fetches.

The config and the command line are trusted; a request is not. Every fetch the service makes goes through
`source_settings`: URLs named by a request may only use http, https, s3 or gs (never a local path or
file://), and thumbnails read the indexed image's own `uri` under the job's own policy (the job wrote it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Literal

from embedding.config import Config, ServiceConfig
from embedding.errors import ConfigError
from embedding.fetch.uripolicy import INLINE, SourceSettings

KEYS_ENV = "EMBEDDING_API_KEYS"
# A URL in a request is fetched over HTTP(S) only: an s3:// or gs:// URL would be read with the service's own
# credentials, which would let any caller read whatever they can.
REQUEST_SCHEMES = ("http", "https")
LOOPBACK = "127.0.0.1"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_digests(cfg: ServiceConfig, environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """SHA-256 of every accepted key: `service.api_keys`, the comma-separated EMBEDDING_API_KEYS, and the
    lines of `service.api_keys_file`.

    Replicas get digests, not keys, so that no key shows in Serve's deployment config or dashboard.
    """
    keys = [*cfg.api_keys, *environ.get(KEYS_ENV, "").split(","), *_keys_file(cfg.api_keys_file)]
    return tuple(sorted({_digest(k.strip()) for k in keys if k.strip()}))


def _keys_file(path: str | None) -> list[str]:
    """The keys of a keys file, one a line (blank lines and lines starting with # skipped). A named file
    that cannot be read or holds no key is a ConfigError: a service meant to have keys never runs without
    them. The message names the file, never its contents."""
    if path is None:
        return []
    try:
        with open(path, encoding="utf-8") as file:
            lines = [line.strip() for line in file]
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"service.api_keys_file: cannot read {path}: {reason}") from None
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ConfigError(f"service.api_keys_file: {path} holds no key")
    return keys


def forget_keys_env() -> None:
    """Remove EMBEDDING_API_KEYS from this process's environment once its digests are taken: every process
    Ray starts from here (its raylet and workers, Serve's controller and replicas, HAProxy) inherits it."""
    os.environ.pop(KEYS_ENV, None)


def request_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents: `Ocp-Apim-Subscription-Key: <key>` or `Authorization: Bearer <key>`."""
    key = headers.get("ocp-apim-subscription-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def authorized(headers: Mapping[str, str], digests: Iterable[str]) -> bool:
    """True when no keys are configured, or the request presents one of them (compared in constant time)."""
    digests = tuple(digests)
    if not digests:
        return True
    key = request_key(headers)
    if key is None:
        return False
    presented = _digest(key)
    return any(hmac.compare_digest(presented, d) for d in digests)


def source_settings(cfg: Config, origin: Literal["request", "index"]) -> SourceSettings:
    """The source policy of one fetch of the service: the only place the service builds SourceSettings.

    `request`: a URL from a request body (untrusted): http and https only, as far as the config allows
    them, under the job's network rules (`fetch.allowed_networks` opens private ranges). `index`: the `uri`
    an indexed row carries, fetched for its thumbnail, under the job's own `input.allowed_schemes`.
    """
    if origin == "request":  # untrusted: no local files, private networks refused unless opened
        settings = SourceSettings.untrusted(cfg)
        return replace(
            settings, allowed_schemes=tuple(s for s in REQUEST_SCHEMES if s in settings.allowed_schemes)
        )
    settings = SourceSettings.from_config(cfg)  # a uri the job itself accepted when it embedded the row
    return replace(settings, allowed_schemes=tuple(s for s in settings.allowed_schemes if s != INLINE))
