"""The hosted API's wire format: api-version, model-version, and the error envelope."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from embedding.errors import EmbeddingError, ErrorCode
from embedding.service.wire import (
    ApiError,
    NoSniff,
    camel_hit,
    check_api_version,
    from_embedding_error,
    model_version,
    reply,
    too_many_requests,
    unwrap,
    vector_response,
    vector_texts,
)

SERVED = ["demo", "rn50-openai"]


def test_api_versions() -> None:
    assert check_api_version({"api-version": "2024-02-01"}) == "2024-02-01"
    assert check_api_version({"api-version": "2023-02-01-preview"}) == "2023-02-01-preview"
    # The hosted API's values match in any case; the version is given back as the API spells it.
    assert check_api_version({"api-version": "2023-02-01-PREVIEW"}) == "2023-02-01-preview"
    for query in ({"api-version": "2023-04-01"}, {"api-version": " 2024-02-01"}, {"api-version": ""}, {}):
        with pytest.raises(ApiError) as info:
            check_api_version(query)
        assert info.value.status == 404
        assert info.value.body() == {"error": {"code": "404", "message": "Resource not found"}}


def test_model_version_names() -> None:
    assert model_version({}, SERVED, "demo") == "demo"
    assert model_version({"model-version": "latest"}, SERVED, "demo") == "demo"
    assert model_version({"modelVersion": "rn50-openai"}, SERVED, "demo") == "rn50-openai"
    assert model_version({"model-version": "demo", "modelVersion": "latest"}, SERVED, "demo") == "demo"
    for latest in ("LATEST", "Latest"):  # values are case-insensitive, as the hosted API's are
        assert model_version({"model-version": latest}, SERVED, "rn50-openai") == "rn50-openai"
    assert model_version({"modelVersion": "RN50-OpenAI"}, SERVED, "demo") == "rn50-openai"
    assert model_version({"model-version": "DEMO"}, SERVED, "demo", body="demo") == "demo"
    with pytest.raises(ApiError) as info:
        model_version({"model-version": "2023-04-15"}, SERVED, "demo")
    assert info.value.status == 400 and info.value.inner[0] == "InvalidModelVersion"
    assert "2023-04-15" in info.value.message and "demo, rn50-openai" in info.value.message
    with pytest.raises(ApiError, match="two model versions"):
        model_version({"model-version": "demo"}, SERVED, "demo", body="rn50-openai")


def test_the_envelope() -> None:
    error = from_embedding_error(EmbeddingError(ErrorCode.INVALID_IMAGE_SIZE, "too big"))
    response = error.response()
    assert response.status_code == 400 and response.headers["x-ms-error-code"] == "InvalidRequest"
    assert json.loads(response.body) == {
        "error": {
            "code": "InvalidRequest",
            "message": "too big",
            "innererror": {"code": "InvalidImageSize", "message": "too big"},
        }
    }
    # Every input code is a 400; the model's own failures are the server's (500).
    for code in ErrorCode:
        status = from_embedding_error(EmbeddingError(code, "x")).status
        assert status == (500 if code in ("EmbeddingNotFinite", "EncodeFailed", "WorkerCrashed") else 400)
    busy = too_many_requests(2).response()
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "2"
    assert busy.headers["X-Content-Type-Options"] == "nosniff"


def test_a_refused_request_url_is_not_a_manifest_row() -> None:
    refused = EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, "network rule: 127.0.0.1 is a loopback address")
    online = from_embedding_error(refused, request_url=True)
    assert (online.status, online.code, online.inner) == (
        400,
        "InvalidRequest",
        ("InvalidImageUrl", refused.message),
    )
    assert from_embedding_error(refused).inner[0] == "InvalidManifestRow"  # the job's code, elsewhere
    missing = from_embedding_error(EmbeddingError(ErrorCode.NOT_FOUND, "gone"), request_url=True)
    assert missing.inner[0] == "NotFound"  # other codes are the job's, URL or not


def _headers_through_nosniff(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers an answer leaves NoSniff with, and that its body still follows."""
    sent: list[dict] = []

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"x"})

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(NoSniff(app)({"type": "http", "path": "/"}, None, send))
    assert sent[1] == {"type": "http.response.body", "body": b"x"}
    return sent[0]["headers"]


def test_nosniff_on_every_answer_once() -> None:
    added = _headers_through_nosniff([(b"content-type", b"image/jpeg")])
    assert added == [(b"content-type", b"image/jpeg"), (b"x-content-type-options", b"nosniff")]
    kept = [(b"X-Content-Type-Options", b"nosniff")]
    assert _headers_through_nosniff(kept) == kept


def test_replies_carry_errors_as_data() -> None:
    assert unwrap(reply([1.0])) == [1.0]
    error = ApiError(404, "NotFound", "gone", ("ImageNotFound", "gone"))
    with pytest.raises(ApiError) as info:
        unwrap(reply(error=error))
    assert info.value.body() == error.body() and info.value.status == 404


def test_hits_in_camel_case() -> None:
    hit = {"image_id": "a", "uri": "u", "cosine": 0.5, "metadata_score": 0.0, "relevance": 0.6, "tags": ["x"]}
    assert camel_hit(hit) == {
        "imageId": "a",
        "uri": "u",
        "cosine": 0.5,
        "metadataScore": 0.0,
        "relevance": 0.6,
        "tags": ["x"],
    }


def test_vectors_are_written_as_the_shortest_text_of_each_float32() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3, 1024)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    odd = np.array([[1e-5, -0.0, 1e-30, 3.4e38, 0.1, 1.0, 1e-45, -2.5e-8]], dtype=np.float32)
    for matrix in (vectors, odd):
        texts = vector_texts(matrix)
        assert len(texts) == len(matrix)
        for values, text in zip(matrix, texts, strict=True):
            response = vector_response("demo", text)
            assert response.media_type == "application/json"
            body = json.loads(response.body)
            assert list(body) == ["modelVersion", "vector"] and body["modelVersion"] == "demo"
            assert np.array_equal(
                np.asarray(body["vector"], dtype=np.float32), values
            )  # every float32 exactly
    (text,) = vector_texts(odd)
    assert "0.1," in text and "1e-45" in text  # not 0.10000000149011612
    assert (
        json.loads(vector_response('a "quoted" version', text).body)["modelVersion"] == 'a "quoted" version'
    )
