"""Fixtures for job tests: a config writer over the session's sample and Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedding.config import Config, load_config


@pytest.fixture
def make_config(tmp_path: Path, ray_local):
    """Write a config for a manifest (and overrides) into tmp_path, and load it."""

    def make(manifest: str | list[str], **sections: dict) -> Config:
        tree = {
            "input": {"manifest": manifest, "unit_rows": 32},
            "output": {"root": str(tmp_path / "out")},
            "model": {"version": "demo"},
            "inference": {"device": "cpu", "batch_size": 32},
            "preprocess": {"batch_size": 16},
            "fetch": {"timeout_s": 5, "retries": 1, "backoff_s": 0.1},
            "index": {"enabled": False},
        }
        for name, values in sections.items():
            tree.setdefault(name, {}).update(values)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(tree))
        return load_config(path)

    return make
