"""Shared fixtures: sample data made on the fly, and one local Ray for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedding.demo.sample import write_sample

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests talk to their own local Ray only
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


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
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
