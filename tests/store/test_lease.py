"""One writer per output root and model version: exclusive leases, on a local disk and an S3 server."""

from __future__ import annotations

import json
import time

import pytest

from embedding.store.lease import Lease, LeaseHeld, LeaseLost
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
