"""The documented `ray job submit` recipe against a head node started here, on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.support.runs import (
    REPO,
    assert_same_outputs,
    job_env,
    kill_processes_mentioning,
    run_to_end,
    sample_manifest,
    write_config,
)
from tests.support.s3_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture
def head(tmp_path: Path):
    """`ray start --head` on 127.0.0.1 with the job server; stopped at the end."""
    port, dashboard = free_port(), free_port()
    env = job_env()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    start = [
        RAY,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        # Ports of its own for the head's agents: the defaults (52365 and others) may be held by the local
        # Ray that the rest of the session shares, and a head whose job agent cannot listen takes no job.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        # Not `ray stop`: it would also stop the local Ray that the rest of the test session shares.
        kill_processes_mentioning(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def test_job_submit_succeeds_with_the_output_of_a_local_run(head, tmp_path: Path, sample_dir: Path) -> None:
    address, env = head
    manifest = sample_manifest(sample_dir, 64, tmp_path / "m.parquet")
    config = write_config(
        tmp_path / "cluster.yaml", str(manifest), str(tmp_path / "submitted"), ray={"num_cpus": None}
    )
    submit = [
        RAY,
        "job",
        "submit",
        f"--address={address}",
        f"--working-dir={REPO}",
        "--no-wait",
        "--runtime-env-json",
        json.dumps({"excludes": [".venv", ".ci-venv", ".git", "sample", "out"]}),
        "--",
        "python",
        "jobs/embed.py",
        "--config",
        str(config),
    ]
    # Right after `ray start` the head's job agent may not have registered yet: Ray refuses the submission
    # with "No available agent ... try again later". Each try is a new `ray job submit` (about a second).
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0 or "No available agent" not in result.stderr or time.monotonic() > deadline:
            break
    assert result.returncode == 0, result.stderr[-2000:]
    job_id = next(
        line.split("'")[1] for line in result.stdout.splitlines() if "submitted successfully" in line
    )
    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 600
    while client.get_job_status(job_id) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "the job did not finish in time"
        time.sleep(2)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]

    local = write_config(tmp_path / "local.yaml", str(manifest), str(tmp_path / "local"))
    run_to_end(local, env)
    assert_same_outputs(tmp_path / "submitted", tmp_path / "local")
