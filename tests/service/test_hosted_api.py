"""The hosted API's routes over HTTP, in the shapes published clients use, against the real server.

Vectors must equal the batch job's for the same input; every error path answers with its status, the
hosted envelope and `x-ms-error-code`, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp
import pytest
import requests
from PIL import Image

from tests.service.conftest import Served, cosine, running
from tests.support.http_server import ImageServer

pytestmark = pytest.mark.integration

KEY = "test-key-0123456789"
IMAGE = "computervision/retrieval:vectorizeImage"
TEXT = "computervision/retrieval:vectorizeText"
MAX_BYTES = 20 * 1024 * 1024


@pytest.fixture(scope="module", params=["haproxy", "python"])
def endpoint(served: Served, request: pytest.FixtureRequest) -> str:
    """The server's endpoint, as clients of the hosted API configure it: with a trailing slash. Every test
    runs against both of what can answer HTTP (service.proxy)."""
    service = {"api_keys": [KEY], "index_poll_s": 0.2, "encoder": {"num_cpus": 0.5}, "proxy": request.param}
    cfg = served.config(service=service)
    with running(cfg, {"Ocp-Apim-Subscription-Key": KEY}) as url:
        yield url + "/"


@pytest.fixture(scope="module")
def files(served: Served) -> ImageServer:
    """A local HTTP server with a few of the sample's images, for {"url"} bodies."""
    ids = some_images(served)
    server = ImageServer({f"{i}.jpg": Path(served.uris[i]).read_bytes() for i in ids}).start()
    yield server
    server.stop()


def bearer(version: str = "demo") -> tuple[dict[str, str], dict[str, str]]:
    return {"api-version": "2024-02-01", "model-version": version}, {"Authorization": f"Bearer {KEY}"}


def subscription() -> tuple[dict[str, str], dict[str, str]]:
    return {"api-version": "2023-02-01-preview", "modelVersion": "latest"}, {"Ocp-Apim-Subscription-Key": KEY}


def some_images(served: Served, n: int = 3) -> list[str]:
    return sorted(served.uris)[:n]


def assert_envelope(response: requests.Response, status: int, inner: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert response.headers["x-ms-error-code"] == body["code"]
    assert body["message"]
    if inner is not None:
        assert body["code"] == "InvalidRequest" and body["innererror"]["code"] == inner, body
    return body


def test_raw_bytes_with_any_content_type_give_the_jobs_vector(endpoint: str, served: Served) -> None:
    params, headers = bearer()
    for image_id, kind in zip(
        some_images(served), [None, "image/*", "application/octet-stream"], strict=True
    ):
        data = Path(served.uris[image_id]).read_bytes()
        extra = {"Content-Type": kind} if kind else {}
        if kind is None:  # requests adds no Content-Type to raw bytes; make sure none is sent
            assert "Content-Type" not in requests.Request("POST", endpoint, data=data).prepare().headers
        response = requests.post(
            urljoin(endpoint, IMAGE), params=params, data=data, headers={**headers, **extra}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["modelVersion"] == "demo" and len(body["vector"]) == 1024
        assert cosine(body["vector"], served.image_vectors[image_id]) >= 0.9999


def test_a_specific_image_type_and_the_preview_api_version(endpoint: str, served: Served) -> None:
    params, headers = subscription()
    image_id = some_images(served, 4)[3]
    response = requests.post(
        urljoin(endpoint, IMAGE),
        params=params,
        data=Path(served.uris[image_id]).read_bytes(),
        headers={**headers, "Content-Type": "image/jpeg"},
    )
    assert response.status_code == 200, response.text
    assert cosine(response.json()["vector"], served.image_vectors[image_id]) >= 0.9999


def test_json_url_to_a_local_server(endpoint: str, served: Served, files: ImageServer) -> None:
    params, headers = bearer()
    for name in files.files:
        response = requests.post(
            urljoin(endpoint, IMAGE), params=params, json={"url": f"{files.url}/img/{name}"}, headers=headers
        )
        assert response.status_code == 200, response.text
        assert cosine(response.json()["vector"], served.image_vectors[name[:-4]]) >= 0.9999


def test_json_text_gives_the_jobs_vector(endpoint: str, served: Served) -> None:
    for params, headers in (bearer(), subscription()):
        for text, expected in served.text_vectors.items():
            response = requests.post(
                urljoin(endpoint, TEXT), params=params, json={"text": text}, headers=headers
            )
            assert response.status_code == 200, response.text
            assert response.json()["modelVersion"] == "demo"
            assert cosine(response.json()["vector"], expected) >= 0.9999


def test_concurrent_aiohttp_clients_are_batched_and_still_exact(endpoint: str, served: Served) -> None:
    ids = some_images(served, 12)
    params, headers = bearer()

    async def main() -> list[tuple[int, dict]]:
        async with aiohttp.ClientSession(headers=headers) as session:

            async def one(image_id: str) -> tuple[int, dict]:
                data = Path(served.uris[image_id]).read_bytes()
                async with session.post(urljoin(endpoint, IMAGE), params=params, data=data) as r:
                    return r.status, await r.json()

            async def text(t: str) -> tuple[int, dict]:
                async with session.post(urljoin(endpoint, TEXT), params=params, json={"text": t}) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*[one(i) for i in ids], *[text(t) for t in served.text_vectors])

    # In a thread of its own: the page tests' browser (Playwright's sync API) may hold this thread's loop.
    with ThreadPoolExecutor(1) as pool:
        answers = pool.submit(asyncio.run, main()).result()
    expected = [served.image_vectors[i] for i in ids] + list(served.text_vectors.values())
    for (status, body), vector in zip(answers, expected, strict=True):
        assert status == 200, body
        assert cosine(body["vector"], vector) >= 0.9999


def test_unknown_or_missing_api_version_is_the_hosted_404(endpoint: str) -> None:
    _, headers = bearer()
    for params in ({"api-version": "2022-10-12-preview"}, {}):
        response = requests.post(
            urljoin(endpoint, TEXT), params=params, json={"text": "a cat"}, headers=headers
        )
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "404", "message": "Resource not found"}}
        assert response.headers["x-ms-error-code"] == "404"
    unknown_route = requests.post(urljoin(endpoint, "computervision/retrieval:nothing"), headers=headers)
    assert unknown_route.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_keys_are_required(endpoint: str) -> None:
    params, _ = bearer()
    for headers in ({}, {"Ocp-Apim-Subscription-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        response = requests.post(
            urljoin(endpoint, TEXT), params=params, json={"text": "a cat"}, headers=headers
        )
        assert_envelope(response, 401)
    assert requests.get(urljoin(endpoint, "retrieval/models")).status_code == 401
    assert requests.get(urljoin(endpoint, "healthz")).status_code == 200  # liveness needs no key


def test_an_unknown_model_version_names_the_served_ones(endpoint: str) -> None:
    params, headers = bearer("2099-01-01")
    response = requests.post(urljoin(endpoint, TEXT), params=params, json={"text": "a cat"}, headers=headers)
    body = assert_envelope(response, 400, "InvalidModelVersion")
    assert "2099-01-01" in body["message"] and "demo" in body["message"]


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("route", "kwargs", "inner"),
    [
        (TEXT, {"json": {"text": " ".join(["word"] * 71)}}, "InvalidText"),
        (TEXT, {"json": {"text": "   "}}, "InvalidText"),
        (TEXT, {"json": {"text": 5}}, "InvalidText"),
        (TEXT, {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, "InvalidArgument"),
        (TEXT, {"json": ["a", "list"]}, "InvalidArgument"),
        (IMAGE, {"data": b"this is not an image"}, "InvalidImageFormat"),
        (IMAGE, {"data": b""}, "InvalidImageFormat"),
        (IMAGE, {"data": _png(8, 200)}, "InvalidImageDimension"),
        (IMAGE, {"json": {"url": "/etc/passwd"}}, "InvalidImageUrl"),
        (IMAGE, {"json": {"url": "file:///etc/passwd"}}, "InvalidImageUrl"),
        (IMAGE, {"json": {"url": "http://169.254.169.254/latest/meta-data"}}, "InvalidImageUrl"),
        (IMAGE, {"json": {"nourl": "x"}}, "InvalidArgument"),
    ],
)
def test_bad_input_is_400_in_the_envelope(endpoint: str, route: str, kwargs: dict, inner: str) -> None:
    params, headers = bearer()
    headers = {**headers, **kwargs.pop("headers", {})}
    response = requests.post(urljoin(endpoint, route), params=params, headers=headers, **kwargs)
    assert_envelope(response, 400, inner)


JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 30_000 + b"]" * 30_000


@pytest.mark.parametrize(
    ("route", "body", "says"),
    [
        (TEXT, DEEP, "nests JSON arrays or objects too deeply"),
        (TEXT, b'{"text": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "too deeply"),
        (IMAGE, b'{"url": ' + b'{"a": ' * 30_000 + b"1" + b"}" * 30_001, "too deeply"),
        (TEXT, b'{"text": NaN}', "NaN is not a JSON value"),
        (IMAGE, b'{"url": Infinity}', "Infinity is not a JSON value"),
        (TEXT, b'{"text": ' + b"9" * 5000 + b"}", "a number has more than 4300 digits"),
    ],
)
def test_json_that_python_cannot_take_is_400(endpoint: str, route: str, body: bytes, says: str) -> None:
    params, headers = bearer()
    response = requests.post(urljoin(endpoint, route), params=params, data=body, headers={**headers, **JSON})
    assert says in assert_envelope(response, 400, "InvalidArgument")["message"]
    text = requests.post(urljoin(endpoint, TEXT), params=params, json={"text": "a cat"}, headers=headers)
    assert text.status_code == 200  # the replica is as healthy as before


def test_case_insensitive_values_nosniff_and_head(endpoint: str, served: Served) -> None:
    _, headers = bearer()
    params = {"api-version": "2023-02-01-PREVIEW", "model-version": "LATEST"}
    text = requests.post(
        urljoin(endpoint, TEXT), params=params, json={"text": "a red circle"}, headers=headers
    )
    assert text.status_code == 200 and text.json()["modelVersion"] == "demo"
    assert cosine(text.json()["vector"], served.text_vectors["a red circle"]) >= 0.9999
    refused = requests.post(urljoin(endpoint, TEXT), params=params, json={"text": 5}, headers=headers)
    unknown = requests.post(urljoin(endpoint, "nothing"), headers=headers)
    for answer in (text, refused, unknown):  # every answer, the errors too
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("", "healthz"):
        got, head = requests.get(urljoin(endpoint, path)), requests.head(urljoin(endpoint, path))
        assert head.status_code == got.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["X-Content-Type-Options"] == "nosniff"


def test_url_failures_are_400(endpoint: str, files: ImageServer) -> None:
    params, headers = bearer()
    missing = requests.post(
        urljoin(endpoint, IMAGE), params=params, json={"url": f"{files.url}/missing"}, headers=headers
    )
    assert_envelope(missing, 400, "NotFound")
    big = requests.post(
        urljoin(endpoint, IMAGE), params=params, json={"url": f"{files.url}/big"}, headers=headers
    )
    assert_envelope(big, 400, "InvalidImageSize")


def _complete(answer: bytes) -> bool:
    """True once a response's head and its Content-Length of body have arrived."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def _raw_post(endpoint: str, headers: list[str], body_bytes: int, chunked: bool) -> tuple[bytes, int]:
    """POST a body of zeros over a plain socket while reading the answer; (the answer, bytes sent).

    The body is sent by a thread that stops when the answer has come (or the server closed), so the count
    shows how much of the body the server let through before it answered.
    """
    parts = urlsplit(endpoint)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    head = [f"POST /{IMAGE}?api-version=2024-02-01 HTTP/1.1", f"Host: {parts.netloc}", *headers]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    answered = threading.Event()
    sent = [0]

    def send_body() -> None:
        chunk = b"\0" * (1 << 20)
        try:
            while sent[0] < body_bytes and not answered.is_set():
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
                sent[0] += len(chunk)
        except OSError:
            pass  # the server answered and closed the connection: as it should

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    answer = b""
    try:
        while not _complete(answer):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    finally:
        answered.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the sender if it is blocked in sendall
        sock.close()
        sender.join(timeout=60)
    return answer, sent[0]


def test_a_body_over_the_limit_is_refused_without_reading_it_all(endpoint: str) -> None:
    auth = f"Authorization: Bearer {KEY}"
    total = 200 * 1024 * 1024
    # Content-Length says it: refused before any of the body is read.
    answer, sent = _raw_post(endpoint, [auth, f"Content-Length: {total}"], total, chunked=False)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"InvalidImageSize" in answer and b"x-ms-error-code: InvalidRequest" in answer
    assert sent < total
    # Chunked, with no length: counted while read, refused once the count passes the limit.
    answer, sent = _raw_post(endpoint, [auth, "Transfer-Encoding: chunked"], total, chunked=True)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"InvalidImageSize" in answer
    assert MAX_BYTES <= sent < total


def test_a_body_just_under_the_limit_is_read(endpoint: str) -> None:
    params, headers = bearer()
    data = b"\xff" * (MAX_BYTES - 1)  # under the limit: read whole, then refused as undecodable
    response = requests.post(urljoin(endpoint, IMAGE), params=params, data=data, headers=headers)
    assert_envelope(response, 400, "InvalidImageFormat")


def test_the_page_asks_for_the_key_and_sends_it(endpoint: str, browser, served: Served) -> None:
    page = browser.new_page()
    try:
        page.goto(endpoint)
        page.wait_for_selector("#key-box:not([hidden])")
        assert "API key" in page.inner_text("#error")
        page.fill("#api-key", KEY)
        page.click("#key-button")
        page.wait_for_selector("body[data-ready='true']", state="attached")
        page.fill("#q", "a red circle")
        page.press("#q", "Enter")
        page.wait_for_selector("#results[data-state='done'] .result", state="attached")
        first = page.get_attribute(".result", "data-image-id")
        assert served.truth[first] == ("red", "circle")
        # Thumbnails need the key too: the page fetches them with it.
        page.wait_for_function("() => document.querySelector('.result img').naturalWidth > 0")
        assert page.eval_on_selector(".result img", "i => i.src").startswith("blob:")
    finally:
        page.close()
