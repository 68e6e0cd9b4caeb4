"""The command line: listing, sample data, and config errors that stop before any Ray work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from embedding.demo.sample import SAMPLE_SCHEMA

# Each test runs `embedding` in a subprocess (a job's start, for `run`).
pytestmark = pytest.mark.slow


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedding.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_models_lists_the_built_in_versions() -> None:
    result = cli("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["version"]: r for r in json.loads(result.stdout)}
    assert set(rows) >= {"2023-04-15", "2022-04-11", "rn50-openai", "demo"}
    assert all(r["dim"] == 1024 for r in rows.values())
    assert rows["demo"]["available"] is True
    assert (
        rows["2022-04-11"]["available"] is False
        and "huggingface-cli download" in rows["2022-04-11"]["problem"]
    )
    table = cli("models").stdout
    assert "demo" in table and "ViT-H-14" in table


def test_sample_writes_images_and_manifest(tmp_path: Path) -> None:
    result = cli("sample", str(tmp_path / "s"), "--count", "12", "--seed", "3")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "s" / "manifest.parquet")
    assert table.schema.equals(SAMPLE_SCHEMA) and table.num_rows == 12
    assert all((tmp_path / "s" / uri).is_file() for uri in table.column("uri").to_pylist())


def write_config(tmp_path: Path, tree: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.mark.parametrize(
    "tree, message",
    [
        ({"input": {"manifst": "m.parquet"}}, "unknown key 'input.manifst'"),
        ({"input": {"manifest": "/nonexistent/m.parquet"}}, "no file matches /nonexistent/m.parquet"),
        ({"input": {"manifest": "m.parquet"}, "model": {"version": "nope"}}, "unknown model version 'nope'"),
    ],
    ids=["unknown-key", "missing-manifest", "unknown-version"],
)
def test_config_errors_fail_before_ray_with_one_line(tmp_path: Path, tree: dict, message: str) -> None:
    result = cli("run", write_config(tmp_path, tree))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Ray" not in result.stderr + result.stdout


def test_missing_weights_fail_at_start(tmp_path: Path) -> None:
    tree = {"input": {"manifest": "m.parquet"}, "model": {"version": "2022-04-11"}}
    result = cli("run", write_config(tmp_path, tree))
    assert result.returncode == 2
    assert "huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in result.stderr
