"""One writer per output root and model version: exclusive leases, on a local disk and an S3 server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from embedding.store.lease import Lease, LeaseHeld, LeaseLost, start_time, this_process
from embedding.store.partition import Partition


def test_a_second_writer_is_refused_with_the_holders_run_id(output_root) -> None:
    part = Partition(output_root[0], "image", "v1", output_root[1])
    with Lease(part, "run-a", timeout_s=30), pytest.raises(LeaseHeld, match="run-a"):
        Lease(part, "run-b", timeout_s=30).acquire()
    with Lease(part, "run-b", timeout_s=30):  # released: the next run gets it
        assert json.loads(part.fs.cat_file(f"{part.state_dir}/lease"))["run_id"] == "run-b"
    assert not part.fs.exists(f"{part.state_dir}/lease")


def test_a_dead_holders_lease_is_taken_over_after_the_timeout(output_root, caplog) -> None:
    part = Partition(output_root[0], "image", "v1", output_root[1])
    dead = {"run_id": "dead", "heartbeat": time.time() - 10, "timeout_s": 5, "host": "h", "pid": 1}
    part.fs.makedirs(part.state_dir, exist_ok=True)
    part.fs.pipe_file(f"{part.state_dir}/lease", json.dumps(dead).encode())
    with Lease(part, "alive", timeout_s=5) as lease:
        lease.check()
    assert "taking over the lease" in caplog.text and "dead" in caplog.text


def test_a_fresh_heartbeat_keeps_the_lease(output_root) -> None:
    part = Partition(output_root[0], "image", "v1", output_root[1])
    with Lease(part, "holder", timeout_s=0.4) as lease:
        path = f"{part.state_dir}/lease"
        first = json.loads(part.fs.cat_file(path))["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads(part.fs.cat_file(path))["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.02)  # waits for the condition (a new heartbeat), bounded
        assert json.loads(part.fs.cat_file(path))["heartbeat"] > first
        with pytest.raises(LeaseHeld):
            Lease(part, "other", timeout_s=0.4).acquire()
        lease.check()


def test_a_holder_that_lost_its_lease_finds_out(tmp_path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    lease = Lease(part, "slow", timeout_s=60).acquire()
    try:
        other = {"run_id": "thief", "heartbeat": time.time(), "timeout_s": 60}
        (tmp_path / "_state" / "image" / "model_version=v1" / "lease").write_text(json.dumps(other))
        with pytest.raises(LeaseLost, match="thief"):
            lease.check()
    finally:
        lease.release()
    assert (
        json.loads((tmp_path / "_state" / "image" / "model_version=v1" / "lease").read_text())["run_id"]
        == "thief"
    )


def _plant(part: Partition, holder: dict) -> None:
    part.fs.makedirs(part.state_dir, exist_ok=True)
    part.fs.pipe_file(f"{part.state_dir}/lease", json.dumps(holder).encode())


def _live_process() -> subprocess.Popen:
    """A process that lives until the test closes its stdin (no timer)."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)


def _exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_holder_on_this_host_is_taken_over_at_once(output_root, caplog) -> None:
    """A holder killed a moment ago (fresh heartbeat) on this machine: its pid is gone, so no waiting."""
    part = Partition(output_root[0], "image", "v1", output_root[1])
    _plant(
        part,
        {
            **this_process(),
            "pid": _exited_pid(),
            "run_id": "killed",
            "heartbeat": time.time(),
            "timeout_s": 60,
        },
    )
    with Lease(part, "next", timeout_s=60) as lease:
        assert lease.took_over is not None and lease.took_over["run_id"] == "killed"
    assert "from run killed, whose process" in caplog.text and "is gone" in caplog.text


def test_a_recycled_pid_is_not_the_holder(tmp_path) -> None:
    """The holder's pid now belongs to a live process that started at another time: the holder is gone."""
    part = Partition(str(tmp_path), "image", "v1")
    live = _live_process()
    try:
        holder = {**this_process(), "pid": live.pid, "pid_start": "1", "run_id": "old", "timeout_s": 60}
        _plant(part, {**holder, "heartbeat": time.time()})
        with Lease(part, "next", timeout_s=60) as lease:
            assert lease.took_over is not None and lease.took_over["run_id"] == "old"
    finally:
        live.stdin.close()  # the process ends when its stdin does
        live.wait()


def test_a_live_holder_on_this_host_and_any_holder_elsewhere_are_waited_for(tmp_path) -> None:
    part = Partition(str(tmp_path), "image", "v1")
    live = _live_process()
    try:
        alive = {
            **this_process(),
            "pid": live.pid,
            "run_id": "alive",
            "heartbeat": time.time(),
            "timeout_s": 60,
        }
        alive["pid_start"] = start_time(live.pid)
        _plant(part, alive)
        with pytest.raises(LeaseHeld, match="alive"):
            Lease(part, "next", timeout_s=60).acquire()
    finally:
        live.stdin.close()  # the process ends when its stdin does
        live.wait()
    # A holder on another machine cannot be seen from here: its lease times out, whatever its pid.
    elsewhere = {**alive, "host": "another-host", "pid": _exited_pid(), "run_id": "remote"}
    _plant(part, elsewhere)
    with pytest.raises(LeaseHeld, match="remote"):
        Lease(part, "next", timeout_s=60).acquire()
