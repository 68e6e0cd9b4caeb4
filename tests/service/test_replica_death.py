"""An encoder replica that dies in the middle of a call, with 16 requests in flight.

The replica kills itself (SIGKILL) at its first call: a fault point (embedding.store.faults) armed in the
replicas' environment and claimed in a folder, so that one replica dies once and its replacement lives.
With two replicas the death costs no request (each call it took is sent once more, to the other); with
one, every request is answered within the deadline: 200, or 503 with Retry-After while the replacement
starts. Nothing hangs, nothing is a 500.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import requests

from embedding.store.faults import CLAIM_ENV, FAULTS_ENV
from tests.service.conftest import Served, running, wait_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 8.0  # service.request_timeout_s of these tests
SLACK_S = 2.0  # what an answer may take beyond it here (a loaded 2-core machine)
TEXT_ROUTE = "/computervision/retrieval:vectorizeText"
PARAMS = {"api-version": "2024-02-01"}


async def _burst(url: str, n: int) -> list[tuple[int, dict[str, str], dict, float]]:
    """n requests at once: (status, headers, body, seconds) of each."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S * 4)  # a hang fails the test's bound, not the client's
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(i: int) -> tuple[int, dict[str, str], dict, float]:
            began = time.monotonic()
            body = {"text": f"a red circle number {i}"}
            async with session.post(url + TEXT_ROUTE, params=PARAMS, json=body) as answer:
                return answer.status, dict(answer.headers), await answer.json(), time.monotonic() - began

        return await asyncio.gather(*(one(i) for i in range(n)))


def _killed_once(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replicas: int):
    """The burst's answers, from a service whose first encoder call kills its replica."""
    claims = tmp_path / "claims"
    claims.mkdir()
    monkeypatch.setenv(FAULTS_ENV, "encoder.call:1")
    monkeypatch.setenv(CLAIM_ENV, str(claims))
    encoder = {"num_cpus": 0.5, "min_replicas": replicas}
    cfg = served.config(service={"request_timeout_s": TIMEOUT_S, "retry_after_s": 2, "encoder": encoder})
    with running(cfg) as url:
        answers = asyncio.run(_burst(url, 16))
        assert (claims / "encoder.call").exists(), "the fault point never fired: no replica died"
        # The service is back: the replacement answers.
        wait_until(
            lambda: requests.post(url + TEXT_ROUTE, params=PARAMS, json={"text": "a red circle"}).ok,
            what="the replacement replica to answer",
        )
    return answers


def test_with_two_replicas_a_dead_one_costs_no_request(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = _killed_once(served, tmp_path, monkeypatch, replicas=2)
    assert [status for status, *_ in answers] == [200] * 16, [(s, b) for s, _, b, _ in answers if s != 200]
    for _, _, body, seconds in answers:
        assert len(body["vector"]) == 1024 and seconds < TIMEOUT_S + SLACK_S


def test_with_one_replica_every_request_is_answered_in_time(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = _killed_once(served, tmp_path, monkeypatch, replicas=1)
    assert {status for status, *_ in answers} <= {200, 503}, [(s, b) for s, _, b, _ in answers]
    for status, headers, body, seconds in answers:
        assert seconds < TIMEOUT_S + SLACK_S, f"answered after {seconds:.1f} s"
        if status == 503:
            assert headers["Retry-After"] == "2" and headers["x-ms-error-code"] == "ServiceUnavailable"
            assert body["error"]["code"] == "ServiceUnavailable"
