"""Fault points: named places where a test can kill the process, deterministically.

`EMBEDDING_FAULTS="commit.after_move:3"` makes the process SIGKILL itself the 3rd time it reaches
`point("commit.after_move")`. Tests use it to kill a driver at an exact step (during a marker write, between
a unit's moves, in the middle of an overwrite swap) or a service replica in the middle of a call, instead of
racing a timer. Unset, a point costs a dict lookup.

Each process counts on its own. A point that many processes reach (every replica of a deployment, and the
replacement of one that died) fires in one process only when `EMBEDDING_FAULTS_CLAIM` names a folder: the
process that fires it first claims `<folder>/<point>` (created exclusively), and the others pass.
"""

from __future__ import annotations

import os
import signal

FAULTS_ENV = "EMBEDDING_FAULTS"
CLAIM_ENV = "EMBEDDING_FAULTS_CLAIM"

_counts: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get(FAULTS_ENV, "")
    out = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        out[name] = int(nth or 1)
    return out


_ARMED = _armed()


def armed_env() -> dict[str, str]:
    """This process's fault settings, for the environment of the processes it starts ({} when unarmed)."""
    return {name: os.environ[name] for name in (FAULTS_ENV, CLAIM_ENV) if os.environ.get(name)}


def _claimed(name: str) -> bool:
    """Whether this process may fire the point: always, unless a claim folder says another one did."""
    folder = os.environ.get(CLAIM_ENV)
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def point(name: str) -> None:
    """Kill this process here if the environment armed this point for this occurrence."""
    if not name or name not in _ARMED:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _ARMED[name] and _claimed(name):
        os.kill(os.getpid(), signal.SIGKILL)
