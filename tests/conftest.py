"""Shared fixtures: sample data made on the fly, and one local Ray for the whole session; the markers that
select the fast lane (`python -m pytest -q -m "not slow"`, CONTRIBUTING.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from embedding.config import Config
from embedding.config_file import load_config
from embedding.demo.sample import write_sample

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests talk to their own local Ray only
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` is every test that starts Ray (the shared local Ray, a cluster, a Serve application) or a job in
    a subprocess: those marked integration or cluster, and every test that uses the session's Ray."""
    for item in items:
        uses_ray = "ray_local" in getattr(item, "fixturenames", ())
        if uses_ray or item.get_closest_marker("integration") or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.slow)
        if "tests/service/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("serve"))


@pytest.fixture(autouse=True)
def _fast_lane_guard(request: pytest.FixtureRequest):
    """A test that starts Ray by itself must be marked slow, or the fast lane would pay for Ray."""
    before = _ray_running()
    yield
    if not before and _ray_running() and not request.node.get_closest_marker("slow"):
        pytest.fail(f"{request.node.nodeid} starts Ray: mark it slow (pytest.mark.slow)")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """384 synthetic images (eight per colour x shape) and their manifest, from a seed unused in training."""
    out = tmp_path_factory.mktemp("sample")
    write_sample(out, count=384, seed=7)
    return out


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every integration test of the session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        # A new local Ray, never a cluster that a test's `ray start` may have left on this machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_address(ray_local) -> str:
    """The shared local Ray's address: a test's `embedding run` subprocesses join it instead of starting
    a Ray of their own (seconds each), and a killed one leaves it to Ray to clean up after it."""
    return ray_local.get_runtime_context().gcs_address


@pytest.fixture
def make_config(tmp_path: Path, ray_local):
    """Write a config for a manifest (and overrides) into tmp_path, and load it."""

    def make(manifest: str | list[str], **sections: dict) -> Config:
        tree = {
            "input": {"manifest": manifest, "unit_rows": 32},
            "output": {"root": str(tmp_path / "out")},
            "model": {"version": "demo"},
            "inference": {"device": "cpu", "batch_size": 32},
            "fetch": {"timeout_s": 5, "retries": 1, "backoff_s": 0.1},
            "index": {"enabled": False},
            # Without Ray unless Ray is the point: a test of the Ray Data plan (isolation, crashes, the
            # whole job on Ray) says run={"executor": "ray"}. Both executors share the stages, the plan
            # and the commit protocol; tests/job/test_standalone.py holds their outputs equal.
            "run": {"executor": "standalone"},
        }
        for name, values in sections.items():
            tree.setdefault(name, {}).update(values)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        return load_config(path)

    return make


@pytest.fixture
def crash_at(monkeypatch):
    """crash_at("commit.after_move", 2): the 2nd time that fault point is reached, raise Crash."""
    from tests.support.faults import arm

    return lambda name, nth=1: arm(monkeypatch, name, nth)


@pytest.fixture(params=["local", "s3"])
def output_root(request, tmp_path: Path):
    """(root, storage_options) of an output root on a local disk, then on a local S3 server (moto)."""
    if request.param == "local":
        yield str(tmp_path / "out"), {}
        return
    from tests.support.s3_server import S3Server

    server = S3Server().start()
    server.create_bucket("outputs")
    yield "s3://outputs/out", server.storage_options
    server.stop()
