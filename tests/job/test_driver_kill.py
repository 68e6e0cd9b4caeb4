"""SIGKILL the driver at three points of a run; each rerun, started at once (the killed run's lease names a
process of this machine that is gone), redoes only uncommitted units."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.runs import (
    assert_same_outputs,
    kill_group,
    outputs,
    sample_manifest,
    start_run,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# The commit protocol and resuming are the same on both executors; runs without Ray cost no actor start-up
# (a killed Ray driver, with tasks of its own still running, is tests/job/test_video_job.py's).
STANDALONE = {"executor": "standalone"}


def commits(root: Path) -> dict[str, dict]:
    folder = root / "_state" / "image" / "model_version=demo" / "commits"
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")} if folder.exists() else {}


def ready(root: Path) -> dict[str, dict]:
    """Units past their commit point (READY written) whose marker is not written yet: the next run rolls
    them forward without redoing them, so they count as done."""
    found = {}
    for path in staging(root):
        if (path / "READY").exists():
            found[path.name] = json.loads((path / "READY").read_text())["marker"]
    return found


def staging(root: Path) -> list[Path]:
    folder = root / "_state" / "image" / "model_version=demo" / "staging"
    return list(folder.iterdir()) if folder.exists() else []


def wait_until(condition, process: subprocess.Popen, timeout: float = 240) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def run_to_end(config: Path, log: Path) -> dict:
    process = start_run(config, log)
    try:
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        kill_group(process)
    root = Path(__import__("yaml").safe_load(config.read_text())["output"]["root"])
    latest = max((root / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(latest.read_text())


def test_kill_the_driver_three_times(tmp_path: Path, sample_dir: Path) -> None:
    manifest = sample_manifest(sample_dir, 192, tmp_path / "m.parquet")
    total = 192
    slow = {"concurrency": 1}  # one 16-row unit decoded at a time: slow enough to be killed in the middle
    reference = write_config(
        tmp_path / "ref.yaml", str(manifest), str(tmp_path / "ref"), preprocess=slow, run=STANDALONE
    )
    run_to_end(reference, tmp_path / "ref.log")

    root = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", str(manifest), str(root), preprocess=slow, run=STANDALONE)
    units = -(-total // 16)
    kill_points = {
        "first write": lambda: bool(staging(root)),  # while the first unit is being written
        "a third": lambda: len(commits(root)) >= units // 3,
        "two thirds": lambda: len(commits(root)) >= 2 * units // 3,
    }
    # Each run is killed at the next point; the run after it starts from what the killed one left.
    uncommitted_before = total
    for name, condition in kill_points.items():
        before = set(commits(root)) | set(ready(root))
        process = start_run(config, tmp_path / f"{name}.log")
        reached = wait_until(condition, process)
        process.kill()  # SIGKILL of the driver alone
        process.wait()
        kill_group(process)  # then the local Ray it started
        log = (tmp_path / f"{name}.log").read_text()[-3000:]
        assert reached, f"the run ended before the kill point '{name}': {log}"
        done = commits(root) | ready(root)  # a unit killed between READY and its marker is done too
        redone = sum(m["stop"] - m["start"] for u, m in done.items() if u not in before)
        assert not before - set(done), "a committed unit disappeared"
        assert redone <= uncommitted_before, f"the run killed at '{name}' redid {redone} rows"
        uncommitted_before = total - sum(m["stop"] - m["start"] for m in done.values())
    summary = run_to_end(config, tmp_path / "final.log")
    assert summary["rows"]["new"] + summary["rows"]["retried"] <= uncommitted_before
    assert summary["rows"]["skipped_done"] == total - uncommitted_before
    vectors, errors = outputs(root)
    assert len(vectors) + len(errors) == total
    assert_same_outputs(root, tmp_path / "ref")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_kills_during_a_marker_write_a_units_moves_and_the_overwrite_swap(
    tmp_path: Path, sample_dir: Path, make_config, backend: str
) -> None:
    """Deterministic kills (fault points, not timers): each rerun ends equal to an uninterrupted run."""
    from embedding.job.run import run
    from tests.support.s3_server import S3Server

    manifest = sample_manifest(sample_dir, 48, tmp_path / "m.parquet")
    reference = make_config(str(manifest), input={"unit_rows": 16})
    run(reference)
    server = S3Server().start() if backend == "s3" else None
    try:
        if server is not None:
            server.create_bucket("faults")
            root, options = "s3://faults/out", server.storage_options
        else:
            root, options = str(tmp_path / "killed"), {}
        sections = {
            "output": {"storage_options": options},
            "input": {"unit_rows": 16},
            "run": STANDALONE,
        }
        config = write_config(tmp_path / "run.yaml", str(manifest), root, **sections)
        for step, faults in (("marker", "commit.marker:2"), ("moves", "commit.after_move:1")):
            process = start_run(config, tmp_path / f"{step}.log", faults)
            try:
                assert process.wait(timeout=600) == -9, (tmp_path / f"{step}.log").read_text()[-3000:]
            finally:
                kill_group(process)
        resumed = make_config(
            str(manifest), input={"unit_rows": 16}, output={"root": root, "storage_options": options}
        )
        summary = run(resumed)
        assert summary["rows"]["skipped_done"] > 0  # the killed runs' committed units were kept
        assert_same_outputs(root, Path(reference.output.root), options)
        process = start_run(config, tmp_path / "swap.log", "swap.after_move:2", "--mode", "overwrite")
        try:
            assert process.wait(timeout=600) == -9, (tmp_path / "swap.log").read_text()[-3000:]
        finally:
            kill_group(process)
        overwrite = make_config(
            str(manifest),
            input={"unit_rows": 16},
            output={"root": root, "storage_options": options},
            run={"mode": "overwrite"},
        )
        run(overwrite)
        assert_same_outputs(root, Path(reference.output.root), options)
    finally:
        if server is not None:
            server.stop()
