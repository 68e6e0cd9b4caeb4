"""Helpers for tests that run the job in a separate process and compare outputs of two runs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]


def write_config(path: Path, manifest: str, root: str, **sections: dict) -> Path:
    tree = {
        "input": {"manifest": manifest, "unit_rows": 16},
        "output": {"root": root},
        "model": {"version": "demo"},
        "ray": {"num_cpus": 2},
        "inference": {"device": "cpu", "batch_size": 8},
        "index": {"enabled": False},
        # A killed run's lease is free again soon (wait_for_free_lease); the stages run on Ray.
        "run": {"lease_timeout_s": 2, "executor": "ray"},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(tree))
    return path


def sample_manifest(sample_dir: Path, rows: int, path: Path) -> Path:
    """The first `rows` rows of the sample's manifest with absolute URIs (a job reading it may run in any
    folder), written to `path`."""
    import pyarrow as pa

    table = pq.read_table(sample_dir / "manifest.parquet").slice(0, rows)
    uris = pa.array([str(sample_dir / u) for u in table.column("uri").to_pylist()])
    pq.write_table(table.set_column(table.schema.get_field_index("uri"), "uri", uris), path)
    return path


def job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_run(config: Path, log: Path, faults: str = "", *args: str) -> subprocess.Popen:
    """`embedding run CONFIG` in its own process group (so its local Ray can be cleaned up with it);
    `faults` arms fault points (embedding.store.faults), e.g. "commit.marker:2"."""
    env = job_env()
    if faults:
        env["EMBEDDING_FAULTS"] = faults
    return subprocess.Popen(
        [sys.executable, "-m", "embedding.cli", "run", str(config), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )


def run_python(
    args: list[str], env: dict[str, str], cwd: Path = REPO, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python ARGS` to its end in a process of its own; fails the test (with its stderr) unless it
    succeeds."""
    done = subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_to_end(config: Path, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`embedding run CONFIG` to its end in a process of its own (see run_python)."""
    return run_python(["-m", "embedding.cli", "run", str(config)], env, cwd)


def wait_for_free_lease(root: Path | str, storage_options: dict | None = None, timeout: float = 60) -> None:
    """Wait until the lease a killed run left (if any) is older than its timeout, so a rerun may take it."""
    import json
    import time

    from fsspec.core import url_to_fs

    fs, base = url_to_fs(str(root), **(storage_options or {}))
    path = f"{base}/_state/image/model_version=demo/lease"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return
        if time.time() - holder["heartbeat"] > holder["timeout_s"]:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the lease at {path} stayed fresh for {timeout} s")


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def kill_processes_mentioning(text: str) -> None:
    """SIGKILL every process whose command line mentions `text` (a Ray head's own temp folder, say)."""
    import psutil

    doomed = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or ()):
                # with its children: Ray's agents rename themselves and would outlive their raylet
                doomed += [proc, *proc.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for proc in doomed:
        try:
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def outputs(
    root: Path | str, version: str = "demo", storage_options: dict | None = None
) -> tuple[dict[str, np.ndarray], dict[tuple[str, int], str]]:
    """(image_id -> vector, (source_file, row_index) -> error code) of a finished output root."""
    from embedding.store.files import filesystem

    fs, base = filesystem(str(root), storage_options or {})  # fresh listings: files were replaced
    emb = pq.read_table(f"{base}/embeddings/model_version={version}", filesystem=fs).to_pandas()
    err = pq.read_table(f"{base}/errors/model_version={version}", filesystem=fs).to_pandas()
    assert emb["image_id"].is_unique, "an id was embedded twice"
    assert not err.duplicated(["source_file", "row_index"]).any(), "a row failed twice"
    vectors = dict(zip(emb["image_id"], (np.asarray(v, np.float32) for v in emb["embedding"]), strict=True))
    errors = dict(zip(zip(err["source_file"], err["row_index"], strict=True), err["error_code"], strict=True))
    return vectors, errors


def assert_same_outputs(a: Path | str, b: Path | str, options_a: dict | None = None) -> None:
    """Two runs are "equal": the same ids in each table, the same codes, cosine >= 0.9999 per id."""
    vectors_a, errors_a = outputs(a, storage_options=options_a)
    vectors_b, errors_b = outputs(b)
    assert set(vectors_a) == set(vectors_b)
    assert errors_a == errors_b
    worst = min(float(vectors_a[i] @ vectors_b[i]) for i in vectors_a)
    assert worst >= 0.9999, f"lowest cosine between the two runs: {worst}"
