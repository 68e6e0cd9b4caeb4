"""Keeping secrets off disk: redacted configs, URIs without user-info, and a log filter.

Secrets reach this package in two ways: `storage_options` of the config (keys, tokens, headers) and
user-info embedded in a URI (`https://user:password@host/...`). Neither may appear in a saved config, a
log line, an output column or an error message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "***"

# A URI's scheme and its user-info, up to the last "@" before the host (user-info cannot hold "/", "?",
# "#" or whitespace, so the match never runs into a path or a second URI).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@]*(?:@[^\s/?#@]*)*@")
# Key names whose values are secrets wherever they appear (matched on whole words of the key).
_SECRET_WORDS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "passphrase",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "apikey",
        "signature",
        "cookie",
        "private",
    }
)
_MIN_SECRET_LENGTH = 6  # shorter option values ("us", "auto") are left in log lines


def strip_userinfo(uri: str) -> str:
    """The URI without `user:password@` (also inside a longer text, such as an error message)."""
    return _USERINFO.sub(r"\g<scheme>", uri) if "@" in uri else uri


def is_secret_key(name: str) -> bool:
    """Whether a key's name says its value is a secret: `secret`, `aws_access_key_id`, `sessionToken`..."""
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()
    return any(word in _SECRET_WORDS for word in re.findall(r"[a-z0-9]+", snake))


def redact_config(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config tree fit to be saved or shown.

    Every value under any `storage_options` becomes "***" (the keys stay, so a reader sees which options
    were set); so does the value of a secret-looking key anywhere; user-info is stripped from every string.
    """

    def walk(node: Any, hide: bool) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, hide or k == "storage_options" or is_secret_key(k)) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, hide) for v in node]
        if hide and node is not None:
            return REDACTED
        return strip_userinfo(node) if isinstance(node, str) else node

    return walk(tree, False)


def secret_values(tree: dict[str, Any]) -> set[str]:
    """The strings a log line must not show: every option value under `storage_options` and every value
    of a secret-looking key (shorter ones are skipped: masking "us" would mangle every line)."""
    found: set[str] = set()

    def walk(node: Any, collect: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, collect or k == "storage_options" or is_secret_key(k))
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v, collect)
        elif collect and isinstance(node, str | int) and not isinstance(node, bool):
            text = str(node)
            if len(text) >= _MIN_SECRET_LENGTH:
                found.add(text)

    walk(tree, False)
    return found


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """A text with user-info stripped and every given secret replaced by "***" (longest first)."""
    text = strip_userinfo(text)
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with `redact_text`; install it on handlers (see `install`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            # The traceback text is formatted later from exc_info; render and redact it now instead.
            formatter = logging.Formatter()
            record.exc_text = redact_text(formatter.formatException(record.exc_info), self.secrets)
            record.exc_info = None
        return True


def install(tree: dict[str, Any] | None = None, logger: logging.Logger | None = None) -> RedactingFilter:
    """Redact the secrets of a config tree (`cfg.model_dump()`) from everything `logger` (default: the
    root logger) and its handlers emit; returns the filter, so a caller can remove it again."""
    target = logger or logging.getLogger()
    flt = RedactingFilter(secret_values(tree or {}))
    target.addFilter(flt)
    for handler in target.handlers:
        handler.addFilter(flt)
    return flt
