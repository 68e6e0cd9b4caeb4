"""Losing a worker node of a multi-node cluster mid-run: the job completes and no row is lost or doubled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.runs import REPO, job_env, outputs, sample_manifest, write_config

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_remove_a_worker_node_while_the_encoder_runs(tmp_path: Path, sample_dir: Path) -> None:
    manifest = sample_manifest(sample_dir, 256, tmp_path / "m.parquet")
    table = pq.read_table(manifest)
    root = tmp_path / "out"
    config = write_config(
        tmp_path / "c.yaml",
        str(manifest),
        str(root),
        ray={"address": None, "num_cpus": None},
        preprocess={"concurrency": 2},
        inference={"batch_size": 4, "stage_class": "tests.support.stages:SlowStage"},
    )
    result = tmp_path / "result.json"
    process = subprocess.run(
        [sys.executable, str(REPO / "tests" / "cluster" / "node_loss.py"), str(config), str(result)],
        env=job_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    outcome = json.loads(result.read_text())
    assert "error" not in outcome, outcome["error"]
    assert "removed" in outcome, "the run ended before a node could be removed"
    assert outcome["removed"]["committed_before"] < 16, "the node was removed after the last unit"
    assert outcome["removed"]["had_encoder"], outcome["removed"]
    summary = outcome["summary"]
    vectors, errors = outputs(root)
    assert len(vectors) + len(errors) == table.num_rows == summary["rows"]["in"]
    assert set(vectors) == set(table.column("image_id").to_pylist())
