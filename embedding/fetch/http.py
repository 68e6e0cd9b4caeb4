"""One HTTP(S) GET for an image URL, under the network policy and a deadline.

Every hop (the URL and each redirect) is checked before any connection is made: its scheme must be
allowed, and its host must resolve to addresses the policy admits (`netpolicy`). The connection goes to
one of exactly those addresses (no second name lookup that could answer differently), TLS still verifies
the certificate against the host name, and redirects are followed here, at most `max_redirects` of them.
User-info of the URL becomes a Basic authorization for that origin only; it is never sent elsewhere and
never appears in a message. Proxies from the environment are not used (they would connect elsewhere).
"""

from __future__ import annotations

import base64
import functools
import http.client
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit

from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.deadline import Attempt
from embedding.fetch.netpolicy import Endpoint, Network, checked_endpoints
from embedding.redact import strip_userinfo

REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 1 << 16
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a "%" that starts no escape is a literal "%"


@dataclass(frozen=True)
class HttpPolicy:
    allowed_schemes: tuple[str, ...]
    networks: tuple[Network, ...]
    max_redirects: int
    headers: tuple[tuple[str, str], ...] = ()  # from storage_options: sent to the first URL's origin only


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to checked addresses instead of resolving `host` again; Host header stays the name."""

    def __init__(self, host: str, port: int, endpoints: list[Endpoint], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._endpoints = endpoints
        # http.client forgets `sock` once a "Connection: close" response arrives; this one stays, so the
        # body can still be read with a timeout and aborted from another thread.
        self.live: socket.socket | None = None

    def _tcp(self) -> socket.socket:
        error: OSError | None = None
        for endpoint in self._endpoints:
            sock = socket.socket(endpoint.family, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout)
                sock.connect(endpoint.sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError("no address to connect to")

    def connect(self) -> None:
        self.sock = self.live = self._tcp()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(self, host: str, port: int, endpoints: list[Endpoint], timeout: float) -> None:
        super().__init__(host, port, endpoints, timeout)
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        self.sock = self.live = self._context.wrap_socket(self._tcp(), server_hostname=self.host)


def _abort(conn: _PinnedHTTPConnection) -> None:
    """Unblock a thread reading this connection: shutdown wakes a blocked recv, close alone may not."""
    if conn.live is not None:
        conn.live.shutdown(socket.SHUT_RDWR)


def _origin(parts) -> tuple[str, str, int | None]:
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def _status_error(status: int, reason: str, shown: str) -> EmbeddingError:
    text = f"{shown} answered HTTP {status} {reason}".rstrip()
    if status in (401, 403):
        return EmbeddingError(ErrorCode.ACCESS_DENIED, text)
    if status in (404, 410):
        return EmbeddingError(ErrorCode.NOT_FOUND, text)
    return EmbeddingError(ErrorCode.FETCH_FAILED, text)  # 408, 429, 5xx and the unexpected: transient


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


def _check_hop(url: str, policy: HttpPolicy, hop: int):
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = strip_userinfo(url)
    if scheme not in ("http", "https") or scheme not in policy.allowed_schemes:
        where = "a redirect to" if hop else "a URL of"
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW,
            f"scheme rule: {where} scheme '{scheme}' is not allowed ({shown})",
        )
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"{shown} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"{shown} names no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"{shown} has an invalid host name") from None
    return parts, scheme, host, port


def _target(parts) -> str:
    """The request target, percent-encoding what a manifest may leave raw (spaces, non-ASCII) as
    browsers and aiohttp do; escapes already present are kept."""
    path = quote(_LONE_PERCENT.sub("%25", parts.path or "/"), safe="/%:@!$&'()*+,;=-._~")
    query = quote(_LONE_PERCENT.sub("%25", parts.query), safe="/%:@!$&'()*+,;=?-._~")
    return path + (f"?{query}" if query else "")


def _headers(parts, first, policy: HttpPolicy) -> dict[str, str]:
    headers = {"User-Agent": "embedding", "Accept": "*/*", "Accept-Encoding": "identity"}
    if _origin(parts) == _origin(first):
        headers.update(dict(policy.headers))
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return headers


def _read_body(
    response: http.client.HTTPResponse,
    sock: socket.socket,
    limit: int,
    deadline: float,
    sink: BinaryIO | None,
) -> bytes:
    """Up to `limit` bytes of the body, each read under the time left (a slow sender cannot stretch it);
    written to `sink` instead of returned when one is given (a video is never held whole in memory)."""
    parts, size = [], 0
    while size < limit:
        sock.settimeout(_remaining(deadline))
        chunk = response.read1(min(_CHUNK, limit - size))
        if not chunk:
            break
        if sink is not None:
            sink.write(chunk)
        else:
            parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def get(
    url: str,
    policy: HttpPolicy,
    max_bytes: int,
    deadline: float,
    attempt: Attempt | None = None,
    sink: BinaryIO | None = None,
    partial: bool = False,
) -> bytes:
    """The body of `url`, following checked redirects; at most `max_bytes` + 1 bytes are read, so the
    caller's size check sees a body that is too large. Raises EmbeddingError for refusals, HTTP statuses
    and a declared length over the limit, TimeoutError past `deadline` (time.monotonic), OSError else.
    `sink` receives the body instead of the return value; `partial` reads only the first `max_bytes`."""
    first = urlsplit(url)
    current = url
    for hop in range(policy.max_redirects + 1):
        parts, scheme, host, port = _check_hop(current, policy, hop)
        endpoints = checked_endpoints(host, port, policy.networks)
        factory = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
        conn = factory(host, port, endpoints, _remaining(deadline))
        if attempt is not None:
            attempt.on_cancel(functools.partial(_abort, conn))
        try:
            target = _target(parts)
            conn.request("GET", target, headers={**_headers(parts, first, policy), "Connection": "close"})
            sock = conn.live
            assert sock is not None
            sock.settimeout(_remaining(deadline))
            response = conn.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise EmbeddingError(
                        ErrorCode.FETCH_FAILED, f"{strip_userinfo(current)} redirects without a Location"
                    )
                current = urljoin(current, location.strip())
                continue
            if response.status != 200:
                raise _status_error(response.status, response.reason, strip_userinfo(current))
            declared = response.getheader("Content-Length")
            if partial:
                return _read_body(response, sock, max_bytes, deadline, sink)
            if declared and declared.isdigit() and int(declared) >= max_bytes:
                raise EmbeddingError(
                    ErrorCode.INVALID_IMAGE_SIZE,
                    f"{strip_userinfo(current)} has {declared} bytes; images must be under {max_bytes} bytes",
                )
            return _read_body(response, sock, max_bytes + 1, deadline, sink)
        finally:
            conn.close()
    raise EmbeddingError(
        ErrorCode.INVALID_MANIFEST_ROW,
        f"redirect rule: {strip_userinfo(url)} redirects more than {policy.max_redirects} times "
        "(fetch.max_redirects)",
    )


def header_pairs(options: dict | None) -> tuple[tuple[str, str], ...]:
    """`headers` of an http(s) storage_options section, as pairs (other fsspec options do not apply)."""
    headers: Iterable = ((options or {}).get("headers") or {}).items()
    return tuple((str(k), str(v)) for k, v in headers)
