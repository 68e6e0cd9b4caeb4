"""What a URI named by a manifest (or a request) may be: the source policy, in one place.

The user's own local manifest may name local files anywhere; a manifest on an object store or HTTP may
name object-store and HTTP(S) URIs only, and none of its relative URIs may climb out of its folder; a
source marked untrusted (a request from the network) names no local files at all; every scheme, `inline`
bytes included, must be in `input.allowed_schemes`. `resolve_uri` applies all of it; the job, the API and
the service call it. Refusals are InvalidManifestRow errors whose message starts with the rule's name.
Where HTTP(S) may connect is the network rule, applied when fetching (`netpolicy`).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from embedding.config import FetchConfig
from embedding.errors import EmbeddingError, ErrorCode
from embedding.redact import strip_userinfo

if TYPE_CHECKING:
    from embedding.config import Config

INLINE = "inline"


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
                f"folder rule: relative uri {uri!r} leaves the folder of its manifest "
                f"{strip_userinfo(str(manifest_folder))}",
            )
        joined = posixpath.join(manifest_folder, uri)
        resolved = joined if remote_manifest else posixpath.normpath(joined)
    check_scheme(resolved, settings.allowed_schemes)
    if is_local(resolved):
        local_path(resolved)  # a file:// URI naming another host is refused here
        if not settings.for_manifest(manifest_folder).allow_local:
            raise refuse_local(resolved, remote_manifest)
    return resolved


def refuse_local(uri: str, remote_manifest: bool) -> EmbeddingError:
    """The error for a local path where local files are not allowed (the caller raises it)."""
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
