"""Batching at the ingress: the queue limit still gives the hosted 429 (test_encoders: batching off)."""

from __future__ import annotations

import pytest

from tests.service.conftest import Served, assert_burst_overflows, running

pytestmark = pytest.mark.integration


def test_requests_beyond_the_batches_in_flight_and_the_queue_get_429(served: Served) -> None:
    # Batches of 2, 4 in flight for the one replica, 1 queued: 9 requests at a time; 24 overflow it.
    encoder = {"num_cpus": 0.5, "max_batch_size": 2, "batch_wait_timeout_s": 0.05, "max_queued_requests": 1}
    with running(served.config(service={"retry_after_s": 3, "encoder": encoder})) as url:
        assert_burst_overflows(url, served)
