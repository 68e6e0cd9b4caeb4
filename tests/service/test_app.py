"""The application builder, the Serve config file for clusters, and `embedding serve` as a command."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml
from ray.serve.schema import ServeDeploySchema

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.service.app import build, served_versions
from embedding.service.body import LIMIT_ENV, PROXY_CALLBACK
from tests.service.conftest import Served, free_port

REPO = Path(__file__).resolve().parents[2]


def test_the_serve_config_file_is_valid_and_its_args_are_a_project_config() -> None:
    text = (REPO / "configs" / "serve.yaml").read_text()
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    (app,) = schema.applications
    assert app.import_path == "embedding.service.app:build" and app.route_prefix == "/"
    cfg = Config.model_validate(app.args)
    assert cfg.service.versions == ["2023-04-15"] and cfg.service.encoder.max_replicas == 4
    env = schema.controller_options.runtime_env["env_vars"]
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == PROXY_CALLBACK
    assert int(env[LIMIT_ENV]) == cfg.limits.max_image_bytes


def test_served_versions() -> None:
    assert served_versions(Config()) == (["demo"], "demo")
    with pytest.raises(ConfigError, match=r"not among service\.versions"):
        served_versions(Config.model_validate({"service": {"default_version": "x", "versions": ["demo"]}}))
    with pytest.raises(ConfigError, match="2022-04-11"):  # its weights are not on this machine
        served_versions(Config.model_validate({"service": {"versions": ["demo", "2022-04-11"]}}))


def test_the_builder_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'service.bogus'"):
        build({"service": {"bogus": 1}})


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


@pytest.mark.integration
def test_embedding_serve_runs_until_interrupted(served: Served, tmp_path: Path, ray_local) -> None:
    """The command on the shared local Ray (RAY_ADDRESS): it says it binds 127.0.0.1, serves, stops."""
    config = tmp_path / "serve.yaml"
    tree = served.config().model_dump(mode="json")
    config.write_text(yaml.safe_dump(tree))
    port = free_port()
    env = {
        **os.environ,
        "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
        "RAY_AUTH_MODE": "disabled",
    }
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("EMBEDDING_API_KEYS", None)
    command = [
        sys.executable,
        "-m",
        "embedding.cli",
        "serve",
        str(config),
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, output), daemon=True).start()
    seen = []
    try:
        while not any("Ctrl-C stops the service" in line for line in seen):
            seen.append(output.get(timeout=300))  # the command prints this once the service answers
        text = "".join(seen)
        assert "listening on 127.0.0.1 only (not 0.0.0.0)" in text
        assert f"at http://127.0.0.1:{port}" in text
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()["status"] == "ok"
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "<title>Search the collection</title>" in page.text
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
