"""Fault points: named places in the commit protocol where a test can kill the process, deterministically.

`EMBEDDING_FAULTS="commit.after_move:3"` makes the process SIGKILL itself the 3rd time it reaches
`point("commit.after_move")`. Tests use it to kill a driver at an exact step (during a marker write, between
a unit's moves, in the middle of an overwrite swap) instead of racing a timer. Unset, a point costs a dict
lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get("EMBEDDING_FAULTS", "")
    out = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        out[name] = int(nth or 1)
    return out


_ARMED = _armed()


def point(name: str) -> None:
    """Kill this process here if the environment armed this point for this occurrence."""
    if not name or name not in _ARMED:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _ARMED[name]:
        os.kill(os.getpid(), signal.SIGKILL)
