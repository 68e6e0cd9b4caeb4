"""Request bodies under the byte limit, in the ingress (`read_body`) and in Serve's proxy (the middleware)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request

from embedding.service.body import SMALL_BODY, BodyLimits, ProxyBodyLimit, json_object, read_body
from embedding.service.wire import ApiError

LIMITS = BodyLimits(image_bytes=1000)
IMAGE_PATH = "/computervision/retrieval:vectorizeImage"


def scope(path: str, headers: dict[str, str] | None = None) -> dict:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": "POST", "path": path, "headers": raw, "query_string": b""}


class Client:
    """Sends a body in chunks and counts how much of it was asked for."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)
        self.taken = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if not self.chunks:
            return {"type": "http.disconnect"}
        chunk = self.chunks.pop(0)
        self.taken += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def answer(self) -> tuple[int, dict]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return start["status"], json.loads(body)


def test_limits_per_route() -> None:
    assert LIMITS.for_path("/computervision/retrieval:vectorizeImage") == 1000
    assert LIMITS.for_path("/prefix/computervision/retrieval:vectorizeText") == SMALL_BODY
    assert LIMITS.for_path("/retrieval:search") == 4 * 334 + SMALL_BODY  # an image in base64, and JSON
    assert LIMITS.for_path("/retrieval/models") is None


def test_read_body_stops_at_the_limit() -> None:
    client = Client([b"x" * 400] * 10)
    with pytest.raises(ApiError) as info:
        asyncio.run(read_body(Request(scope(IMAGE_PATH), client.receive), LIMITS))
    assert info.value.status == 400 and info.value.inner[0] == "InvalidImageSize"
    assert client.taken == 1200  # three chunks: the third crossed the limit, the rest was never read
    declared = Client([b"x" * 10])
    with pytest.raises(ApiError):
        request = Request(scope(IMAGE_PATH, {"Content-Length": "1000"}), declared.receive)
        asyncio.run(read_body(request, LIMITS))
    assert declared.taken == 0
    small = Client([b"x" * 500, b"y" * 499])
    assert (
        asyncio.run(read_body(Request(scope(IMAGE_PATH), small.receive), LIMITS)) == b"x" * 500 + b"y" * 499
    )


async def echo_app(scope: dict, receive, send) -> None:
    """An app that reads the whole body and answers with its size (as the ingress would)."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


def test_the_proxy_middleware_refuses_at_the_limit() -> None:
    middleware = ProxyBodyLimit(echo_app, image_bytes=1000)
    ok = Client([b"x" * 600, b"x" * 399])
    asyncio.run(middleware(scope(IMAGE_PATH), ok.receive, ok.send))
    assert ok.answer() == (200, {"size": 999})
    over = Client([b"x" * 600] * 100)
    asyncio.run(middleware(scope(IMAGE_PATH), over.receive, over.send))
    status, body = over.answer()
    assert status == 400 and body["error"]["innererror"]["code"] == "InvalidImageSize"
    assert over.taken == 1200 and len([m for m in over.sent if m["type"] == "http.response.start"]) == 1
    declared = Client([b"x" * 600] * 100)
    asyncio.run(middleware(scope(IMAGE_PATH, {"Content-Length": "60000"}), declared.receive, declared.send))
    assert declared.answer()[0] == 400 and declared.taken == 0
    # The proxy's refusals never pass the ingress's NoSniff: they carry the header themselves.
    start = next(m for m in declared.sent if m["type"] == "http.response.start")
    assert (b"x-content-type-options", b"nosniff") in start["headers"]
    text = Client([b"x" * (SMALL_BODY + 1)])
    asyncio.run(middleware(scope("/computervision/retrieval:vectorizeText"), text.receive, text.send))
    assert text.answer()[1]["error"]["innererror"]["code"] == "InvalidArgument"
    other = Client([b"x" * 5000])  # not one of our routes: untouched
    asyncio.run(middleware(scope("/elsewhere"), other.receive, other.send))
    assert other.answer() == (200, {"size": 5000})


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nests JSON arrays or objects too deeply"),
        (b'{"text": ' + b"[" * 30_000, "nests JSON arrays or objects too deeply"),
        (b'{"a": ' * 30_000 + b"1" + b"}" * 30_000, "nests JSON arrays or objects too deeply"),
        (b'{"top": NaN}', "NaN is not a JSON value"),
        (b'{"relevanceWeight": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"top": ' + b"9" * 5000 + b"}", "a number has more than 4300 digits"),
        (b'{"text": "a cat"', "not valid JSON: Expecting ',' delimiter (line 1, column 17)"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b'["a", "list"]', "must be a JSON object"),
    ],
)
def test_json_bodies_that_are_not_objects_are_400(body: bytes, says: str) -> None:
    with pytest.raises(ApiError) as info:
        json_object(body)
    assert info.value.status == 400 and info.value.code == "InvalidRequest"
    assert info.value.inner[0] == "InvalidArgument" and says in info.value.message
    assert json_object(b'{"text": "a cat", "top": 1e39}') == {"text": "a cat", "top": 1e39}  # still JSON
