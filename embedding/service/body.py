"""Request bodies under the job's byte limit: counted while they are read, never buffered beyond it.

Two places count, with the same limits:

- `read_body` in the ingress replica stops reading at the limit and refuses the request;
- `ProxyBodyLimit`, a middleware of Serve's HTTP proxy, does the same in front of it. The proxy otherwise
  reads a request body as fast as the client sends it, whatever the replica does with it; the middleware
  answers 400 as soon as the count reaches the limit (at once when Content-Length says so) and stops
  reading. `embedding serve` installs it through Serve's proxy callback
  (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=embedding.service.body:proxy_middlewares); on a cluster,
  configs/serve.yaml sets the same variable for the controller, whose proxies inherit it.

`json_object` reads a JSON body that has arrived: anything that is not a JSON object is a 400, never a 500.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding.errors import EmbeddingError, ErrorCode
from embedding.service.wire import INVALID_ARGUMENT, ApiError, from_embedding_error, invalid

PROXY_CALLBACK = "embedding.service.body:proxy_middlewares"
LIMIT_ENV = "EMBEDDING_SERVE_MAX_IMAGE_BYTES"  # tells the proxy middleware the image byte limit
SMALL_BODY = 64 * 1024  # JSON bodies without an image: a URL, a text, a vector

IMAGE_ROUTES = ("retrieval:vectorizeImage",)
TEXT_ROUTES = ("retrieval:vectorizeText",)
SEARCH_ROUTES = ("retrieval:search",)


@dataclass(frozen=True)
class BodyLimits:
    """Per route, the body size at which a request is refused (a body must be smaller)."""

    image_bytes: int  # limits.max_image_bytes: a raw image must be under it

    @property
    def search_bytes(self) -> int:
        # A search body may carry an image in base64 (4 bytes per 3), plus the rest of the JSON.
        return 4 * math.ceil(self.image_bytes / 3) + SMALL_BODY

    def for_path(self, path: str) -> int | None:
        """The limit of one of our POST routes, or None for a path that is not ours."""
        if path.endswith(IMAGE_ROUTES):
            return self.image_bytes
        if path.endswith(TEXT_ROUTES):
            return SMALL_BODY
        if path.endswith(SEARCH_ROUTES):
            return self.search_bytes
        return None

    def refusal(self, path: str, size: int, limit: int) -> ApiError:
        """The hosted answer to a body over the limit: 400, InvalidImageSize for image bodies."""
        message = f"the request body has {_describe(size, limit)}"
        if path.endswith(TEXT_ROUTES):
            return invalid(INVALID_ARGUMENT, message)
        return from_embedding_error(EmbeddingError(ErrorCode.INVALID_IMAGE_SIZE, message))


def _describe(size: int, limit: int) -> str:
    more = f"{size} bytes" if size == limit else f"more than {limit} bytes"
    return f"{more}; it must be under {limit} bytes"


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The body of one of our routes, refused (ApiError 400) as soon as it reaches the route's limit."""
    path = request.url.path
    limit = limits.for_path(path) or SMALL_BODY
    declared = _declared_length(request.scope.get("headers", []))
    if declared is not None and declared >= limit:
        raise limits.refusal(path, declared, limit)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size >= limit:
            raise limits.refusal(path, size, limit)
        parts.append(chunk)
    return b"".join(parts)


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON value")


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body. Refused (400): what is not JSON, Python's extensions of it (NaN, Infinity),
    nesting too deep to parse (json raises RecursionError, which must be a 400, not a 500), and integers
    of more digits than Python converts. The value is never walked recursively afterwards: each route
    checks the types of the fields it reads."""
    try:
        value = json.loads(body, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise invalid(INVALID_ARGUMENT, f"the request body is not valid JSON: {exc.msg} ({where})") from None
    except UnicodeDecodeError:
        raise invalid(INVALID_ARGUMENT, "the request body is not valid JSON: not UTF-8 text") from None
    except RecursionError:
        deepest = f"about {sys.getrecursionlimit()} levels at most"
        raise invalid(
            INVALID_ARGUMENT, f"the request body nests JSON arrays or objects too deeply ({deepest})"
        ) from None
    except ValueError as exc:  # NaN or Infinity (_not_json); an integer of too many digits
        digits = f"a number has more than {sys.get_int_max_str_digits()} digits"
        why = str(exc) if "JSON value" in str(exc) else digits
        raise invalid(INVALID_ARGUMENT, f"the request body is not valid JSON: {why}") from None
    if not isinstance(value, dict):
        raise invalid(INVALID_ARGUMENT, "the request body must be a JSON object")
    return value


class ProxyBodyLimit:
    """ASGI middleware for Serve's proxy: refuse our routes' bodies at their limit, before the replica."""

    def __init__(self, app: ASGIApp, image_bytes: int | None = None):
        self.app = app
        self.limits = BodyLimits(image_bytes or int(os.environ.get(LIMIT_ENV, 20 * 1024 * 1024)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.for_path(scope["path"]) if scope["type"] == "http" else None
        if limit is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        declared = _declared_length(scope.get("headers", []))
        if declared is not None and declared >= limit:
            # Refused without reading any of the body; the server closes the connection afterwards.
            await self.limits.refusal(path, declared, limit).response()(scope, receive, send)
            return
        state = {"size": 0, "refused": False, "started": False}

        async def counting_receive() -> Message:
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["size"] += len(message.get("body", b""))
                if state["size"] >= limit:
                    state["refused"] = True
                    if not state["started"]:
                        response = self.limits.refusal(path, state["size"], limit).response()
                        await response(scope, receive, send)
                    # The app behind sees a client that went away, and stops waiting for the body.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"]:
                return  # the refusal is the answer; whatever the app says after it is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


def proxy_middlewares() -> list[Middleware]:
    """Serve's HTTP proxy callback (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): our middleware list."""
    return [Middleware(ProxyBodyLimit)]
