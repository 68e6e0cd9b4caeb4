"""Losing a worker node of a multi-node cluster mid-run: the job completes and no row is lost or doubled."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.support.runs import REPO, job_env, outputs, run_python, sample_manifest, write_config

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
    script = REPO / "tests" / "cluster" / "node_loss.py"
    run_python([str(script), str(config), str(result)], job_env(), timeout=900)
    outcome = json.loads(result.read_text())
    assert "error" not in outcome, outcome["error"]
    assert "removed" in outcome, "the run ended before a node could be removed"
    assert outcome["removed"]["committed_before"] < 16, "the node was removed after the last unit"
    assert outcome["removed"]["had_encoder"], outcome["removed"]
    summary = outcome["summary"]
    vectors, errors = outputs(root)
    assert len(vectors) + len(errors) == table.num_rows == summary["rows"]["in"]
    assert set(vectors) == set(table.column("image_id").to_pylist())
