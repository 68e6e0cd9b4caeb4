"""The encoder deployment with batching off and a tiny queue: same vectors, and 429 when the queue is full."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from embedding.config import Config
from embedding.service.calls import batch_options
from embedding.service.encoders import replica_config
from tests.service.conftest import Served, assert_burst_overflows, cosine, running

pytestmark = pytest.mark.integration

PARAMS = {"api-version": "2024-02-01"}


def test_replicas_use_their_share_of_the_cores() -> None:
    assert replica_config(Config()).inference.torch_threads == 1
    cfg = Config.model_validate({"service": {"encoder": {"num_cpus": 3.5}}})
    assert replica_config(cfg).inference.torch_threads == 4
    cfg = Config.model_validate({"service": {"encoder": {"num_cpus": 0, "torch_threads": 6}}})
    assert replica_config(cfg).inference.torch_threads == 6


def test_batch_options() -> None:
    on = Config.model_validate({"service": {"encoder": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}}})
    assert batch_options(on) == (16, 0.05)
    off = Config.model_validate({"service": {"encoder": {"batching": False, "max_batch_size": 16}}})
    assert batch_options(off) == (1, 0.0)


@pytest.fixture(scope="module")
def url(served: Served) -> str:
    encoder = {"num_cpus": 0.5, "batching": False, "max_ongoing_requests": 1, "max_queued_requests": 1}
    cfg = served.config(service={"index_poll_s": 1, "retry_after_s": 3, "encoder": encoder})
    with running(cfg) as base:
        yield base


def images(served: Served, n: int) -> list[str]:
    return sorted(served.uris)[:n]


def test_batching_off_gives_the_jobs_vectors(url: str, served: Served) -> None:
    for image_id in images(served, 3):
        answer = requests.post(
            f"{url}/computervision/retrieval:vectorizeImage",
            params=PARAMS,
            data=Path(served.uris[image_id]).read_bytes(),
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert cosine(answer.json()["vector"], served.image_vectors[image_id]) >= 0.9999
    for text, vector in served.text_vectors.items():
        answer = requests.post(
            f"{url}/computervision/retrieval:vectorizeText", params=PARAMS, json={"text": text}, timeout=60
        )
        assert cosine(answer.json()["vector"], vector) >= 0.9999


def test_a_full_queue_is_429_with_retry_after(url: str, served: Served) -> None:
    # One request in the model and one waiting are all the queue takes; a burst of 24 overflows it.
    assert_burst_overflows(url, served)
