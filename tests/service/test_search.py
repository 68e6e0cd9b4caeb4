"""Our own routes over HTTP: search ranked exactly as `embedding search --json`, models, thumbnails,
originals, Serve's metrics, and a rebuilt index served while a client keeps querying.

The server runs without API keys (asked for 0.0.0.0, it must listen on 127.0.0.1 only) on a private copy
of the outputs, since one test rebuilds the index.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from embedding import cli
from embedding.api import Vector, search
from embedding.config import Config
from embedding.index.build import build_index
from embedding.index.store import index_dir, read_manifest
from embedding.service.app import start, stop
from embedding.service.searcher import ResultUris
from tests.service.conftest import GONE_ID, INLINE_ID, Served, copy_root, free_port, wait_until
from tests.support.http_server import ImageServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(served: Served, tmp_path_factory: pytest.TempPathFactory):
    """(base URL, config, config file) of a server without keys on a copy of the outputs."""
    folder = tmp_path_factory.mktemp("search-service")
    cfg = served.config(root=copy_root(served, folder / "out"))
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    started = start(cfg, host="0.0.0.0", port=free_port())
    try:
        assert started.url.startswith("http://127.0.0.1:") and not started.keys
        assert any("127.0.0.1 only" in note for note in started.notes)
        wait_until(lambda: requests.get(f"{started.url}/healthz", timeout=10).ok, what="the service")
        yield started.url, cfg, config_file, started
    finally:
        stop()


def post(url: str, body: dict, **params: str) -> requests.Response:
    return requests.post(f"{url}/retrieval:search", json=body, params=params, timeout=60)


def cli_search(capsys: pytest.CaptureFixture, config_file: Path, *args: str) -> list[dict]:
    """`embedding search CONFIG ... --json`, run in this process (the same code path as the command)."""
    capsys.readouterr()
    assert cli.main(["search", str(config_file), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def assert_same_ranking(http: list[dict], expected: list[dict]) -> None:
    """Same ids in the same order, and the same scores (the query vector may differ in the last bits).
    The command prints whole uris; the service (service.result_uri: relative) shows the sample's, which
    lie outside the manifest's folder, by their file name."""
    assert [r["imageId"] for r in http] == [r["image_id"] for r in expected]
    for got, want in zip(http, expected, strict=True):
        assert got["uri"] == (Path(want["uri"]).name if want["uri"] else None)
        assert got["tags"] == want["tags"] and got["caption"] == want["caption"]
        for ours, theirs in (
            ("cosine", "cosine"),
            ("metadataScore", "metadata_score"),
            ("relevance", "relevance"),
        ):
            assert got[ours] == pytest.approx(want[theirs], abs=2e-5)


@pytest.mark.parametrize("text", ["a red circle", "un cercle rouge", "un círculo rojo", "ein roter Kreis"])
def test_text_search_ranks_as_the_command_does(setup, capsys, text: str) -> None:
    url, _, config_file, _ = setup
    answer = post(url, {"text": text, "top": 20})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["modelVersion"] == "demo" and body["buildId"]
    assert_same_ranking(body["results"], cli_search(capsys, config_file, text, "--top", "20"))


def test_filters_and_weights_rank_as_the_command_does(setup, capsys) -> None:
    url, _, config_file, _ = setup
    body = post(url, {"text": "a shape", "top": 12, "filters": {"tags": "triangle"}}).json()
    expected = cli_search(capsys, config_file, "a shape", "--top", "12", "--filter", "tags=triangle")
    assert_same_ranking(body["results"], expected)
    assert all("triangle" in r["tags"] for r in body["results"])
    weighted = post(url, {"text": "a green heart on a gray background", "top": 15, "relevanceWeight": 0.6})
    expected = cli_search(
        capsys,
        config_file,
        "a green heart on a gray background",
        "--top",
        "15",
        "--set",
        "search.relevance_weight=0.6",
    )
    assert_same_ranking(weighted.json()["results"], expected)


def test_image_queries_rank_as_the_command_does(setup, capsys, served: Served) -> None:
    url, _, config_file, _ = setup
    # The last blue star: the extra rows copy the first, and exact ties may come in either order.
    star = [i for i, t in sorted(served.truth.items()) if t == ("blue", "star") and i in served.uris][-1]
    path = served.uris[star]
    expected = cli_search(capsys, config_file, "--image", path, "--top", "10")
    uploaded = post(url, {"image": base64.b64encode(Path(path).read_bytes()).decode(), "top": 10})
    assert_same_ranking(uploaded.json()["results"], expected)
    assert all(r["metadataScore"] == 0 for r in uploaded.json()["results"])
    server = ImageServer({"star.jpg": Path(path).read_bytes()}).start()
    try:
        by_url = post(url, {"url": f"{server.url}/img/star.jpg", "top": 10})
    finally:
        server.stop()
    assert_same_ranking(by_url.json()["results"], expected)


def test_vector_and_more_like_this_queries(setup, served: Served) -> None:
    url, cfg, _, _ = setup
    image_id = sorted(served.uris)[5]
    vector = served.image_vectors[image_id]
    expected = [h.to_dict() for h in search(Vector(vector, "demo"), cfg, top=10)]
    by_vector = post(url, {"vector": vector.tolist(), "modelVersion": "demo", "top": 10})
    assert_same_ranking(by_vector.json()["results"], expected)
    like = post(url, {"imageId": image_id, "top": 10}).json()["results"]
    assert like[0]["imageId"] == image_id and like[0]["cosine"] == pytest.approx(1.0, abs=1e-3)
    assert [r["imageId"] for r in like] == [r["image_id"] for r in expected]


def test_vectors_of_another_version_are_refused(setup) -> None:
    url, _, _, _ = setup
    vector = np.full(1024, 1 / 32, np.float32).tolist()
    mixed = post(url, {"vector": vector, "modelVersion": "rn50-openai"}, **{"model-version": "demo"})
    assert mixed.status_code == 400
    error = mixed.json()["error"]
    assert error["innererror"]["code"] == "VersionMismatch"
    assert "rn50-openai" in error["message"] and "demo" in error["message"]
    unserved = post(url, {"vector": vector, "modelVersion": "rn50-openai"})
    assert unserved.json()["error"]["innererror"]["code"] == "InvalidModelVersion"
    narrow = post(url, {"vector": [0.5, 0.5], "modelVersion": "demo"})
    assert narrow.status_code == 400 and narrow.json()["error"]["innererror"]["code"] == "InvalidArgument"


def test_pages_of_results(setup) -> None:
    url, _, _, _ = setup
    whole = post(url, {"text": "a yellow square", "top": 30}).json()["results"]
    second = post(url, {"text": "a yellow square", "top": 10, "skip": 10}).json()
    assert second["skip"] == 10 and [r["imageId"] for r in second["results"]] == [
        r["imageId"] for r in whole[10:20]
    ]


@pytest.mark.parametrize(
    ("body", "inner"),
    [
        ({"text": "a cat", "url": "https://example.org/x.jpg"}, "InvalidArgument"),
        ({}, "InvalidArgument"),
        ({"text": "a cat", "top": 0}, "InvalidArgument"),
        ({"text": "a cat", "top": 5000}, "InvalidArgument"),
        ({"text": "a cat", "filters": {"nope": "x"}}, "InvalidArgument"),
        ({"text": "a cat", "top": 10**30}, "InvalidArgument"),
        ({"text": "a cat", "relevanceWeight": 1e308}, "InvalidArgument"),
        ({"imageId": "s0-000001", "frameIndex": 10**30}, "InvalidArgument"),
        ({"vector": [1e39] + [0.0] * 1023, "modelVersion": "demo"}, "InvalidArgument"),
        ({"vector": [0.0] * 1024, "modelVersion": "demo"}, "InvalidArgument"),
        ({"text": "a cat", "filters": {"tags": 3}}, "InvalidArgument"),
        ({"text": "a cat", "relevanceWeight": 2}, "InvalidArgument"),
        ({"text": "a cat", "colour": "red"}, "InvalidArgument"),
        ({"image": "***"}, "InvalidArgument"),
        ({"image": base64.b64encode(b"not an image").decode()}, "InvalidImageFormat"),
        ({"url": "/etc/passwd"}, "InvalidImageUrl"),
        ({"text": " ".join(["word"] * 71)}, "InvalidText"),
    ],
)
def test_bad_searches_are_400(setup, body: dict, inner: str) -> None:
    url, _, _, _ = setup
    answer = post(url, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["innererror"]["code"] == inner
    assert answer.headers["x-ms-error-code"] == "InvalidRequest"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "nests JSON arrays or objects too deeply"),
        (b'{"vector": ' + b"[" * 30_000 + b"]" * 30_000 + b"}", "too deeply"),
        (b'{"text": "a cat", "top": NaN}', "NaN is not a JSON value"),
        (b'{"text": "a cat", "relevanceWeight": 1e999}', "'relevanceWeight' must be a number from 0 to 1"),
        (b'{"text": "a cat", "top": 1e999}', "'top' must be an integer from 1 to 1000"),
        (b'{"vector": [1e39, 0.5], "modelVersion": "demo"}', "'vector'[0] is 1e+39"),
        (b'{"vector": [0, 0], "modelVersion": "demo"}', "'vector' is all zeros"),
        (b'{"text": "a cat", "filters": {"nope": "x"}}', "filter on 'nope': no such column"),
    ],
)
def test_bad_searches_say_what_is_wrong(setup, body: bytes, says: str) -> None:
    url, _, _, _ = setup
    headers = {"Content-Type": "application/json"}
    answer = requests.post(f"{url}/retrieval:search", data=body, headers=headers, timeout=60)
    assert answer.status_code == 400 and answer.headers["x-ms-error-code"] == "InvalidRequest", answer.text
    error = answer.json()["error"]
    assert error["innererror"]["code"] == "InvalidArgument" and says in error["message"]
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def uris(manifest: Path, mode: str = "relative") -> ResultUris:
    cfg = {"input": {"manifest": str(manifest)}, "service": {"result_uri": mode}}
    return ResultUris.from_config(Config.model_validate(cfg))


def test_result_uris_hide_the_servers_folders(tmp_path: Path) -> None:
    manifest = tmp_path / "m" / "images.parquet"
    manifest.parent.mkdir()
    manifest.write_bytes(b"")  # listed, never read
    inside, outside = str(tmp_path / "m" / "cats" / "a.jpg"), str(tmp_path / "b.jpg")
    relative = uris(manifest)
    assert relative.show(inside) == "cats/a.jpg" and relative.show(outside) == "b.jpg"
    assert relative.show("https://user:secret@host/x/c.jpg?sig=abc#f") == "c.jpg"
    assert relative.show(None) is None
    assert uris(tmp_path / "gone.parquet").show(inside) == "a.jpg"  # no manifest: file names
    remote = ResultUris("relative", ["s3://bucket/m", "s3://bucket/m/deeper"])
    assert remote.show("s3://bucket/m/deeper/d.jpg") == "d.jpg"  # the nearer folder
    assert remote.show("s3://bucket/m/e/f.jpg?x=1") == "e/f.jpg"
    assert uris(manifest, "manifest").show(inside) == inside
    assert uris(manifest, "none").show(inside) is None


def test_models_route(setup, served: Served) -> None:
    url, cfg, _, _ = setup
    body = requests.get(f"{url}/retrieval/models", timeout=30).json()
    assert body["defaultVersion"] == "demo" and body["limits"]["maxTextWords"] == 70
    (model,) = body["models"]
    manifest = read_manifest(index_dir(cfg.output.root, "demo"), {})
    assert model["modelVersion"] == "demo" and model["dim"] == 1024 and "fr" in model["languages"]
    assert model["index"]["rows"] == len(served.truth) and model["index"]["buildId"] == manifest.build_id
    tags = {item["value"] for item in model["filters"]["tags"]}
    assert {"red", "circle", "triangle"} <= tags


def _jpeg_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.size


def test_thumbnails_come_from_the_indexed_source(setup, served: Served) -> None:
    url, cfg, _, _ = setup
    image_id = sorted(served.uris)[7]
    answer = requests.get(f"{url}/retrieval/thumbnails/{image_id}", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert max(_jpeg_size(answer.content)) <= 256 and "X-Thumbnail-Placeholder" not in answer.headers
    cached = list((Path(cfg.output.root) / "_cache" / "thumbnails").rglob("*.jpg"))
    assert any(p.read_bytes() == answer.content for p in cached)
    inline = requests.get(f"{url}/retrieval/thumbnails/{INLINE_ID}", timeout=30)
    assert inline.status_code == 200 and "X-Thumbnail-Placeholder" not in inline.headers
    star = np.asarray(Image.open(io.BytesIO(served.inline_bytes)).convert("RGB").resize((64, 64)), np.float32)
    small = np.asarray(Image.open(io.BytesIO(inline.content)).convert("RGB").resize((64, 64)), np.float32)
    assert np.abs(star - small).mean() < 8  # the inline bytes' own picture
    gone = requests.get(f"{url}/retrieval/thumbnails/{GONE_ID}", timeout=30)
    assert gone.status_code == 200 and gone.headers["X-Thumbnail-Placeholder"] == "NotFound"
    assert max(_jpeg_size(gone.content)) <= 256
    assert all(r.headers["X-Content-Type-Options"] == "nosniff" for r in (answer, inline, gone))
    for frame in ("9" * 30, "-1", "²"):  # OverflowError, ValueError: never a 500
        bad = requests.get(f"{url}/retrieval/thumbnails/{image_id}", params={"frameIndex": frame}, timeout=30)
        assert bad.status_code == 400 and bad.headers["x-ms-error-code"] == "InvalidRequest"
        assert "'frameIndex' (query parameter)" in bad.json()["error"]["innererror"]["message"]
    unknown = requests.get(f"{url}/retrieval/thumbnails/..%2F..%2Fetc%2Fpasswd", timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"]["innererror"]["code"] == "ImageNotFound"


def test_originals(setup, served: Served) -> None:
    url, _, _, _ = setup
    image_id = sorted(served.uris)[9]
    answer = requests.get(f"{url}/retrieval/images/{image_id}", timeout=30)
    assert answer.status_code == 200 and answer.content == Path(served.uris[image_id]).read_bytes()
    assert answer.headers["content-type"] in ("image/jpeg", "image/png")
    assert requests.get(f"{url}/retrieval/images/{INLINE_ID}", timeout=30).content == served.inline_bytes
    gone = requests.get(f"{url}/retrieval/images/{GONE_ID}", timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["innererror"]["code"] == "NotFound"


def test_serve_metrics_are_exported_for_prometheus(setup) -> None:
    url, _, _, started = setup
    assert started.metrics_url
    post(url, {"text": "a cat", "top": 0})  # an error, counted by code

    def exported() -> str | None:
        text = requests.get(started.metrics_url, timeout=10).text
        wanted = ("ray_serve_num_http_requests", "ray_embedding_service_errors")
        return text if all(name in text for name in wanted) else None

    text = wait_until(exported, timeout_s=90, what="Serve's metrics")
    assert 'code="InvalidArgument"' in text


def test_a_rebuilt_index_is_served_without_a_failed_request(setup) -> None:
    url, cfg, _, _ = setup
    old = read_manifest(index_dir(cfg.output.root, "demo"), {}).build_id
    statuses: list[int] = []
    builds: list[str] = []
    done = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not done.is_set():
                answer = session.post(
                    f"{url}/retrieval:search", json={"text": "a blue star", "top": 5}, timeout=60
                )
                statuses.append(answer.status_code)
                builds.append(answer.json().get("buildId"))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: len(statuses) >= 3, what="the client's first answers")
        new = build_index(cfg, force=True).build_id
        assert new != old
        wait_until(lambda: new in builds, what="answers from the rebuilt index")
        seen = len(statuses)
        wait_until(lambda: len(statuses) >= seen + 3, what="more answers after the switch")
    finally:
        done.set()
        thread.join(timeout=120)
    assert set(statuses) == {200}
    assert builds[0] == old and builds[-1] == new
    assert not (Path(index_dir(cfg.output.root, "demo")) / f"build-{old}").exists()  # the old build is gone
