"""Attempts on daemon threads under a deadline nobody waits past (embedding.fetch.deadline)."""

from __future__ import annotations

import threading

import pytest

from embedding.fetch import deadline


def wait_for_abandoned(before: int) -> int:
    for thread in threading.enumerate():
        if thread.name == "embedding-test":
            thread.join(timeout=10)
    return deadline.stuck_count() - before


def test_result_and_exception_come_back() -> None:
    assert deadline.run(lambda attempt: 42, 5, 10, name="test") == 42
    with pytest.raises(ValueError, match="bad"):
        deadline.run(lambda attempt: (_ for _ in ()).throw(ValueError("bad")), 5, 10, name="test")


def test_a_base_exception_of_the_attempt_is_raised_in_the_caller() -> None:
    def work(attempt):
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        deadline.run(work, 5, 10, name="test")


def test_timeout_abandons_the_thread_and_calls_its_cancel_hooks() -> None:
    before = deadline.stuck_count()
    release, hooked = threading.Event(), threading.Event()

    def work(attempt: deadline.Attempt) -> None:
        attempt.on_cancel(hooked.set)
        release.wait()

    with pytest.raises(deadline.AttemptTimeout):
        deadline.run(work, 0.2, 10, name="test")
    assert hooked.is_set() and deadline.stuck_count() == before + 1
    release.set()
    assert wait_for_abandoned(before) == 0


def test_too_many_stuck_attempts_start_nothing() -> None:
    before = deadline.stuck_count()
    release = threading.Event()
    started = []

    def work(attempt):
        started.append(1)
        release.wait()

    with pytest.raises(deadline.AttemptTimeout):
        deadline.run(work, 0.1, before + 1, name="test")
    with pytest.raises(deadline.TooManyStuck):
        deadline.run(work, 0.1, before + 1, name="test")
    assert len(started) == 1
    release.set()
    assert wait_for_abandoned(before) == 0
