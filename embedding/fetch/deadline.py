"""Running one read attempt under a deadline that nobody ever waits past.

A read can block in the kernel where no timeout reaches it (a stalled NFS mount, a library without a
timeout of its own). Each attempt therefore runs on a daemon thread of its own: the caller waits for it
until the deadline and then walks away. The abandoned thread is never joined, so it holds no task, no
thread pool and no process exit, and it takes no slot that a later read needs (no shared pool to fill).
Abandoned threads that are still running are counted per process; past `max_stuck` a new attempt fails
at once instead of adding another thread.

An attempt can also register how to abort itself (close its socket, say); the runner calls that when the
deadline passes, so a thread blocked on a socket ends right away instead of being left behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_stuck = 0  # abandoned attempts whose threads still run


class TooManyStuck(RuntimeError):
    """More abandoned reads are still running in this process than the limit allows."""


class AttemptTimeout(TimeoutError):
    """The attempt did not finish before its deadline; its thread was abandoned (or aborted)."""


class Attempt:
    """Handed to the work function: `on_cancel(hook)` registers how to abort it, `cancelled` says whether
    the caller has given up (a loop can stop early)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], object]] = []
        self.cancelled = False

    def on_cancel(self, hook: Callable[[], object]) -> None:
        with self._lock:
            if not self.cancelled:
                self._hooks.append(hook)
                return
        _call(hook)  # already cancelled: abort at once

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            _call(hook)


def _call(hook: Callable[[], object]) -> None:
    with contextlib.suppress(OSError):  # the socket was closed already
        hook()


class _Box(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: Exception | None = None
        self.fatal: BaseException | None = None
        self.abandoned = False


def stuck_count() -> int:
    """Abandoned attempts of this process whose threads are still running."""
    return _stuck


def run(work: Callable[[Attempt], T], timeout: float, max_stuck: int, name: str = "read") -> T:
    """`work(attempt)` on a daemon thread; its result, or its exception re-raised here.

    Raises AttemptTimeout after `timeout` seconds (the thread is abandoned, its cancel hooks called) and
    TooManyStuck without starting anything when `max_stuck` abandoned attempts still run.
    """
    global _stuck
    with _lock:
        if _stuck >= max_stuck:
            raise TooManyStuck(
                f"{_stuck} earlier reads of this process are still stuck past their deadline "
                f"(fetch.max_stuck_reads is {max_stuck})"
            )
    box: _Box[T] = _Box()
    attempt = Attempt()

    def target() -> None:
        global _stuck
        try:
            box.value = work(attempt)
        except Exception as exc:
            box.error = exc
        except BaseException as exc:  # SystemExit and the like: re-raised in the caller's thread below
            box.fatal = exc
        finally:
            with _lock:
                box.done.set()
                if box.abandoned:
                    _stuck -= 1

    thread = threading.Thread(target=target, name=f"embedding-{name}", daemon=True)
    thread.start()
    if not box.done.wait(timeout):
        with _lock:
            if not box.done.is_set():
                box.abandoned = True
                _stuck += 1
        if box.abandoned:
            attempt.cancel()
            raise AttemptTimeout(f"no result within {timeout:g} s")
    if box.fatal is not None:
        raise box.fatal
    if box.error is not None:
        raise box.error
    return box.value  # type: ignore[return-value]
