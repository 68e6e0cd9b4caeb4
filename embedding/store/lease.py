"""One writer per output root and model version: a lease file with a heartbeat.

`<root>/_state/<kind>/model_version=<v>/lease` holds the holder's run id, host, pid and the time of its last
heartbeat. It is created atomically (exclusive create on local disks, a conditional PUT on S3; see
`embedding.store.files.create_exclusive`), so of two runs started at once exactly one gets it and the other
stops at once with a message naming the holder. The holder rewrites the heartbeat every `lease_timeout_s / 4`
seconds; a lease whose heartbeat is older than `run.lease_timeout_s` belongs to a run that died and is taken
over (the log says so). A holder that finds its lease taken over stops writing (the next check raises).

A holder on this machine is not waited out: the lease also records the holder's boot id, pid namespace and
process start time, and when all three say "this kernel, this namespace" while the pid is gone (or is now
another process, started at another time), the holder is dead and its lease is taken over at once. A holder
on another host, or one this process cannot see, is waited out as before.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from embedding.errors import ConfigError
from embedding.store.files import create_exclusive, read_json, remove, remove_if_unchanged, write_json
from embedding.store.partition import Partition

log = logging.getLogger(__name__)


class LeaseHeld(ConfigError):
    """Another live run holds the lease of this output root and model version."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (its heartbeat stopped for longer than the timeout)."""


class Lease:
    def __init__(self, partition: Partition, run_id: str, timeout_s: float, purpose: str = "run"):
        self.partition = partition
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.purpose = purpose
        self.path = f"{partition.state_dir}/lease"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False
        self.took_over: dict[str, Any] | None = None  # the lease of a run that died, when this one took it

    def _body(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "purpose": self.purpose,
            **this_process(),
            "heartbeat": time.time(),
            "timeout_s": self.timeout_s,
        }

    def acquire(self) -> Lease:
        """Take the lease, or raise LeaseHeld naming the live holder; take over a dead holder's lease."""
        fs = self.partition.fs
        where = self.partition.url(self.path)
        while True:
            if create_exclusive(fs, self.path, json.dumps(self._body())):
                break
            try:
                raw = fs.cat_file(self.path)
            except FileNotFoundError:
                continue  # released between our two calls
            try:
                holder = json.loads(raw)
            except ValueError:  # half-written by an older version: nobody can hold it
                holder = {}
            age = time.time() - float(holder.get("heartbeat", 0))
            gone = holder_is_gone(holder)
            if age <= float(holder.get("timeout_s", self.timeout_s)) and not gone:
                raise LeaseHeld(
                    f"output {self.partition.root} (model version '{self.partition.version}') is in use by "
                    f"run {holder.get('run_id')} ({holder.get('purpose', 'run')} on {holder.get('host')}, "
                    f"pid {holder.get('pid')}, last heartbeat {age:.0f} s ago); wait for it to finish, or "
                    f"for its lease to time out after {holder.get('timeout_s', self.timeout_s)} s if it died"
                )
            why = (
                f"whose process (pid {holder.get('pid')} on this host) is gone"
                if gone
                else f"whose heartbeat stopped {age:.0f} s ago"
            )
            log.warning("taking over the lease of %s from run %s, %s", where, holder.get("run_id"), why)
            # Remove the very lease we read, never one that another run created since.
            remove_if_unchanged(fs, self.path, raw)
            self.took_over = holder
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        interval = max(self.timeout_s / 4, 0.05)
        while not self._stop.wait(interval):
            try:
                self.check()
                write_json(self.partition.fs, self.path, self._body())
            except LeaseLost:
                log.error("the lease of %s was taken over by another run", self.partition.root)
                return
            except OSError as exc:  # a transient storage error: the next beat tries again
                log.warning("lease heartbeat failed: %s", exc)

    def check(self) -> None:
        """Raise LeaseLost if the lease no longer names this run."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id} lost the lease of {self.partition.root}")
        holder = read_json(self.partition.fs, self.path)
        if holder is not None and holder.get("run_id") != self.run_id:
            self.lost = True
            raise LeaseLost(
                f"run {self.run_id} lost the lease of {self.partition.root} to {holder.get('run_id')}"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = read_json(self.partition.fs, self.path)
        if holder is not None and holder.get("run_id") == self.run_id:
            remove(self.partition.fs, self.path)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """When a process started, in clock ticks since boot (Linux); None if there is no such process."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    return stat.rpartition(")")[2].split()[19] if stat else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def this_process() -> dict[str, Any]:
    """Who holds a lease: host and pid, and what tells a live process from a dead one on this machine."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "boot_id": _read("/proc/sys/kernel/random/boot_id"),
        "pid_ns": _pid_namespace(),
        "pid_start": start_time(pid),
    }


def holder_is_gone(holder: dict[str, Any]) -> bool:
    """Whether a lease's holder is a process of this machine that no longer runs. False whenever that cannot
    be known (another host or boot, another pid namespace, a lease without these fields, not Linux)."""
    here = this_process()
    same = all(holder.get(k) == here[k] and here[k] is not None for k in ("host", "boot_id", "pid_ns"))
    if not same or not isinstance(holder.get("pid"), int) or holder.get("pid_start") is None:
        return False
    # No such process, or the pid was given to another process since (started at another time).
    return start_time(holder["pid"]) != holder["pid_start"]
