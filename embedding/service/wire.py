"""The hosted API's wire format: api-version, model-version, the error envelope and its status codes.

Applications written for the hosted VectorizeImage/VectorizeText API must work against this service by
changing only their endpoint and key, so its answers are reproduced as they are:

    200  {"modelVersion": "<version>", "vector": [...]}
    4xx  {"error": {"code": "InvalidRequest", "message": "...",
                    "innererror": {"code": "<the job's error code>", "message": "..."}}}
         with the top-level code in the `x-ms-error-code` header

An unknown or missing api-version gets the hosted answer (404, {"error": {"code": "404", "message":
"Resource not found"}}), as do 401 and 429. Our own routes (search, models, thumbnails) use the same envelope.
Parameter values are matched as the hosted API matches them, in any case (`LATEST`, `2023-02-01-PREVIEW`).
Every answer carries `X-Content-Type-Options: nosniff` (NoSniff), so that no browser reads a JSON error or
a thumbnail as something else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedding.errors import EmbeddingError, ErrorCode

API_VERSIONS = ("2023-02-01-preview", "2024-02-01")
LATEST = "latest"

# Inner codes of request problems that are not about one input (the job's ErrorCode covers those).
INVALID_ARGUMENT = "InvalidArgument"  # a body or parameter of the wrong shape
INVALID_MODEL_VERSION = "InvalidModelVersion"  # a model version that is not served
VERSION_MISMATCH = "VersionMismatch"  # a vector of one version against the index of another
INDEX_NOT_FOUND = "IndexNotFound"  # the version is served but has no index (yet)
IMAGE_NOT_FOUND = "ImageNotFound"  # an image id that is not in the index
# A request's URL that the source policy refuses (a local path, file://, a private address). The job calls
# the same refusal of a manifest's row InvalidManifestRow; a caller of the API sent no manifest.
INVALID_IMAGE_URL = "InvalidImageUrl"

_NOSNIFF = (b"x-content-type-options", b"nosniff")

# The job's codes that describe a bad input: HTTP 400, never 500. The others are the server's fault.
_BAD_INPUT = frozenset(ErrorCode) - {
    ErrorCode.EMBEDDING_NOT_FINITE,
    ErrorCode.ENCODE_FAILED,
    ErrorCode.WORKER_CRASHED,
}


class ApiError(Exception):
    """An answer in the hosted error envelope."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        inner: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner[0], "message": self.inner[1]}
        return {"error": error}

    def response(self) -> JSONResponse:
        # nosniff here too, for the errors answered outside NoSniff: the proxy's body-limit refusals
        # (embedding.service.body) and the 500 of an unexpected exception (Starlette's outermost handler).
        headers = {"x-ms-error-code": self.code, "X-Content-Type-Options": "nosniff", **self.headers}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def reply(value: Any = None, error: ApiError | None = None) -> dict[str, Any]:
    """What a deployment returns to the ingress: a value, or an error in the hosted envelope's terms.

    Errors travel as data, not exceptions, so that they reach the ingress as they were raised.
    """
    if error is not None:
        return {
            "error": {
                "status": error.status,
                "code": error.code,
                "message": error.message,
                "inner": error.inner,
            }
        }
    return {"value": value}


def unwrap(answer: dict[str, Any]) -> Any:
    """The value of a deployment's reply; raises its ApiError."""
    if "error" in answer:
        e = answer["error"]
        raise ApiError(e["status"], e["code"], e["message"], tuple(e["inner"]) if e["inner"] else None)
    return answer["value"]


def invalid(inner_code: str, message: str, status: int = 400) -> ApiError:
    """A bad request: the hosted top-level code InvalidRequest, our reason as the inner error."""
    return ApiError(status, "InvalidRequest", message, (inner_code, message))


def from_embedding_error(error: EmbeddingError, request_url: bool = False) -> ApiError:
    """An input refused by the job's own checks, with the job's error code as the inner code; a URL of the
    request (`request_url`) that the source policy refuses gets InvalidImageUrl instead of the job's
    InvalidManifestRow (the job's errors table keeps its code)."""
    if request_url and error.code == ErrorCode.INVALID_MANIFEST_ROW:
        return invalid(INVALID_IMAGE_URL, error.message)
    if error.code in _BAD_INPUT:
        return invalid(error.code.value, error.message)
    return ApiError(500, "InternalServerError", error.message, (error.code.value, error.message))


def not_found() -> ApiError:
    """The hosted answer to an unknown route or api-version."""
    return ApiError(404, "404", "Resource not found")


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
        "key for an active subscription and use a correct regional API endpoint for your resource.",
    )


def too_many_requests(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "429",
        f"Rate limit is exceeded. Try again in {retry_after_s} seconds.",
        headers={"Retry-After": str(retry_after_s)},
    )


def unavailable(retry_after_s: int, message: str) -> ApiError:
    """503 with Retry-After: the service cannot answer now (no replica, or none in time), but will."""
    return ApiError(503, "ServiceUnavailable", message, headers={"Retry-After": str(retry_after_s)})


def check_api_version(query: Mapping[str, str]) -> str:
    """The request's api-version (as API_VERSIONS spells it; any case); a missing or unknown one gets the
    hosted 404."""
    version = _known(query.get("api-version") or "", API_VERSIONS)
    if version is None:
        raise not_found()
    return version


def _known(name: str, known: list[str] | tuple[str, ...]) -> str | None:
    """`name` as `known` spells it: the same text, else the one that differs from it in case only."""
    if name in known:
        return name
    return next((k for k in known if k.casefold() == name.casefold()), None)


def model_version(query: Mapping[str, str], served: list[str], default: str, body: str | None = None) -> str:
    """The model version a request names (`model-version` or `modelVersion`; `latest` in any case, or none:
    default); a served version's name matches in any case too."""
    named = {v for v in (query.get("model-version"), query.get("modelVersion"), body) if v} or {LATEST}
    versions = {default if name.casefold() == LATEST else _known(name, served) or name for name in named}
    if len(versions) > 1:
        raise invalid(
            INVALID_ARGUMENT, f"the request names two model versions: {' and '.join(sorted(versions))}"
        )
    (name,) = versions
    if name not in served:
        raise invalid(
            INVALID_MODEL_VERSION,
            f"model version '{name}' is not served here; served versions: {', '.join(served)} "
            f"('{LATEST}' is {default})",
        )
    return name


def vector_texts(vectors: np.ndarray) -> list[str]:
    """Each row of a float32 matrix as a JSON array, each number the shortest text that reads back as the
    same float32 (Arrow's formatter, in C, one call for the whole batch): a quarter of the time `json` takes
    for 1,024 floats, and half the bytes. Rows must be finite (the encoder checks them)."""
    rows, dim = vectors.shape
    numbers = pc.cast(pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)), pa.string())
    flat = numbers.to_pylist()
    return ["[" + ",".join(flat[i * dim : (i + 1) * dim]) + "]" for i in range(rows)]


def vector_response(version: str, vector_json: str) -> Response:
    """The hosted 200, {"modelVersion": ..., "vector": [...]}, with the vector already as JSON text (the
    encoder writes it, so that the ingress, one process for every request, does not)."""
    return Response(
        f'{{"modelVersion":{json.dumps(version)},"vector":{vector_json}}}', media_type="application/json"
    )


_CAMEL = {
    "image_id": "imageId",
    "metadata_score": "metadataScore",
    "frame_time_s": "frameTimeS",
    "frame_index": "frameIndex",
    "start_s": "startS",
    "end_s": "endS",
}


def camel_hit(hit: dict[str, Any]) -> dict[str, Any]:
    """A search result (Hit.to_dict(), as `embedding search --json` prints it) in camelCase JSON; a video
    result's `video` (its segment: startS, endS, frameTimeS of the best frame, frameIndex, frames) too."""
    out = {_CAMEL.get(key, key): value for key, value in hit.items()}
    if isinstance(out.get("video"), dict):
        out["video"] = {_CAMEL.get(key, key): value for key, value in out["video"].items()}
    return out


class NoSniff:
    """ASGI middleware: `X-Content-Type-Options: nosniff` on every answer of the app that lacks it (one
    place for JSON, thumbnails, originals, the page and the errors)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if all(name.lower() != _NOSNIFF[0] for name, _ in headers):
                    message = {**message, "headers": [*headers, _NOSNIFF]}
            await send(message)

        await self.app(scope, receive, with_nosniff)
