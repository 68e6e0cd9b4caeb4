"""Runs without Ray (embedding.job.standalone): what Ray writes, without starting Ray; and Ray when it must: a
stage that fails a whole unit, a run that died before, a manifest over `run.standalone_max_rows`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedding.errors import ErrorCode
from embedding.job.run import run
from tests.job.test_poison import poisoned_manifest
from tests.job.test_run import bad_and_odd_manifest
from tests.support.runs import assert_same_outputs, job_env, outputs, run_to_end, start_run, write_config

pytestmark = pytest.mark.integration


def test_standalone_writes_what_ray_writes(tmp_path: Path, sample_dir: Path, make_config) -> None:
    manifest, expected = bad_and_odd_manifest(tmp_path, sample_dir)
    on_ray = make_config(str(manifest), output={"root": str(tmp_path / "ray")}, run={"executor": "ray"})
    here = make_config(str(manifest), output={"root": str(tmp_path / "here")}, run={"executor": "auto"})
    assert run(on_ray)["executor"] == "ray"
    summary = run(here)
    assert summary["executor"] == "standalone"
    assert_same_outputs(tmp_path / "here", tmp_path / "ray")
    vectors, errors = outputs(tmp_path / "here")
    assert {i for i, code in expected.items() if code is None} <= set(vectors)
    assert sorted(set(errors.values())) == sorted(
        {c for c in expected.values() if c} | {ErrorCode.DUPLICATE_ID}
    )
    again = run(here)  # a rerun finds everything committed, whichever executor wrote it
    assert again["executor"] == "none" and again["rows"]["skipped_done"] == summary["rows"]["in"]


def test_a_small_run_starts_no_ray(tmp_path: Path, sample_dir: Path) -> None:
    """The whole command, as a user runs it: no Ray start-up line, the phases and executor in the summary."""
    root = tmp_path / "out"
    config = write_config(
        tmp_path / "run.yaml", str(sample_dir / "manifest.parquet"), str(root), run={"executor": "auto"}
    )
    process = start_run(config, tmp_path / "log")
    assert process.wait(timeout=600) == 0, (tmp_path / "log").read_text()[-3000:]
    log = (tmp_path / "log").read_text()
    assert "Ray" not in log, log  # no start-up line, no Ray Data progress
    summary = json.loads(next((root / "runs").glob("*/summary.json")).read_text())
    assert summary["executor"] == "standalone" and summary["rows"]["embedded"] == 384
    assert summary["first_batch_encoded_s"] > 0 and summary["phases_s"]["pipeline"] > 0
    assert len(outputs(root)[0]) == 384


def test_a_run_starts_its_own_local_ray_in_a_plain_environment(tmp_path: Path, sample_dir: Path) -> None:
    """No RAY_AUTH_MODE, no RAY_ADDRESS (a user's shell): the job's local Ray and its driver must agree on
    Ray's authentication, which Ray reads when it is imported (the other tests set it)."""
    manifest = _sample_manifest(tmp_path, sample_dir, 16)
    root = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", str(manifest), str(root))
    env = {k: v for k, v in job_env().items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    run_to_end(config, env, cwd=tmp_path)
    summary = json.loads(next((root / "runs").glob("*/summary.json")).read_text())
    assert summary["executor"] == "ray" and summary["rows"]["embedded"] == 16


def test_a_stage_that_fails_a_unit_sends_the_units_left_to_ray(
    tmp_path: Path, sample_dir: Path, make_config
) -> None:
    manifest = poisoned_manifest(tmp_path, sample_dir)
    cfg = make_config(
        str(manifest),
        input={"unit_rows": 8},
        run={"executor": "standalone"},
        inference={
            "stage_class": "tests.support.stages:FailingStage",
            "batch_size": 8,
            "max_task_retries": 0,
        },
    )
    summary = run(cfg)
    assert summary["executor"] == "standalone, then ray"
    vectors, errors = outputs(cfg.output.root)
    assert len(vectors) == 39 and "poison" not in vectors
    assert errors == {(str(manifest), 20): ErrorCode.WORKER_CRASHED}
    assert summary["rows"]["embedded"] + summary["rows"]["failed"] == 40


def test_a_decode_worker_that_dies_hands_the_units_left_to_ray(
    tmp_path: Path, sample_dir: Path, ray_address: str
) -> None:
    """Each decode worker is killed at its second unit (a planted fault point, no timer): the run goes on on
    Ray with the units not committed yet, and ends as an uninterrupted run."""
    manifest = _sample_manifest(tmp_path, sample_dir, 48)
    runs = {}
    for name, faults in (("reference", ""), ("killed", "standalone.decode:2")):
        root = tmp_path / name
        config = write_config(
            tmp_path / f"{name}.yaml",
            str(manifest),
            str(root),
            input={"unit_rows": 8},
            run={"executor": "standalone"},
            ray={"address": ray_address},  # for the units handed to Ray: the session's, no start-up
        )
        process = start_run(config, tmp_path / f"{name}.log", faults)
        assert process.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
        runs[name] = json.loads(next((root / "runs").glob("*/summary.json")).read_text())
    assert runs["reference"]["executor"] == "standalone"
    assert runs["killed"]["executor"] == "standalone, then ray"
    assert "the run without Ray stopped" in (tmp_path / "killed.log").read_text()
    assert_same_outputs(tmp_path / "killed", tmp_path / "reference")


def _sample_manifest(folder: Path, sample_dir: Path, rows: int) -> Path:
    sample = pq.read_table(sample_dir / "manifest.parquet").slice(0, rows)
    manifest = folder / "m.parquet"
    uris = [str(sample_dir / u) for u in sample["uri"].to_pylist()]
    pq.write_table(sample.set_column(sample.schema.get_field_index("uri"), "uri", [uris]), manifest)
    return manifest


def _plant_dead_lease(root: Path) -> None:
    folder = root / "_state" / "image" / "model_version=demo"
    folder.mkdir(parents=True)
    dead = {"run_id": "dead", "purpose": "run", "host": "h", "pid": 1, "heartbeat": time.time() - 3600}
    (folder / "lease").write_text(json.dumps({**dead, "timeout_s": 60}))


@pytest.mark.parametrize("why", ["the last run died", "more rows than standalone_max_rows"])
def test_ray_when_standalone_is_not_safe_or_not_small(
    tmp_path: Path, sample_dir: Path, make_config, why: str
) -> None:
    manifest = _sample_manifest(tmp_path, sample_dir, 24)
    limit = 10 if why.startswith("more") else 10_000
    cfg = make_config(str(manifest), run={"executor": "auto", "standalone_max_rows": limit})
    if why.startswith("the last"):
        _plant_dead_lease(Path(cfg.output.root))
    summary = run(cfg)
    assert summary["executor"] == "ray" and summary["rows"]["embedded"] == 24
