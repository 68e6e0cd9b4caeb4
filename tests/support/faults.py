"""Crashing at a fault point in the test process: the files on disk are all that is left, as after a kill."""

from __future__ import annotations


class Crash(Exception):
    """Stands for the process dying at a fault point of embedding.store.faults."""


def arm(monkeypatch, name: str, nth: int = 1) -> None:
    """Raise Crash the nth time `embedding.store.faults.point(name)` is reached (any other name: never)."""
    from embedding.store import faults

    seen = {"n": 0}

    def point(reached: str) -> None:
        if reached == name:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(name)

    monkeypatch.setattr(faults, "point", point)
