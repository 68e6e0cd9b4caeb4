"""API keys never leave the process that reads them: replicas get their SHA-256 digests only.

Keys reach `embedding serve` from the config (`service.api_keys`) and from EMBEDDING_API_KEYS. Neither may
be in what the application hands Serve (the deployments' arguments, which Serve's controller keeps and
every replica receives), nor in the environment or command line of any process that Ray starts.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import requests
from ray import cloudpickle

from embedding.service.app import build_app, replica_config_json
from embedding.service.security import KEYS_ENV
from tests.service.conftest import Served, serving_command

CONFIG_KEY = "config-key-3f9a1c7e5b"
ENV_KEY = "env-key-8d2b6e0f4a"
ROUTE = "/computervision/retrieval:vectorizeText"


def test_the_deployments_arguments_hold_no_key(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_ENV, ENV_KEY)
    cfg = served.config(service={"api_keys": [CONFIG_KEY], "encoder": {"num_cpus": 0.5}})
    assert CONFIG_KEY not in replica_config_json(cfg)
    # What Serve receives and stores, as it travels: the application pickled with its bound arguments.
    shipped = cloudpickle.dumps(build_app(cfg))
    assert CONFIG_KEY.encode() not in shipped and ENV_KEY.encode() not in shipped
    assert b"api_keys" in shipped  # the config is there, with its keys emptied


def _holds(process: psutil.Process, secret: bytes) -> bool:
    """Whether the secret is in a process's environment or command line (ours: readable)."""
    try:
        pid = process.pid
        return any(secret in Path(f"/proc/{pid}/{part}").read_bytes() for part in ("environ", "cmdline"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False  # gone meanwhile


@pytest.mark.cluster  # `embedding serve` starts a Ray of its own: the processes it starts are all its own
def test_no_process_that_ray_starts_sees_a_key(served: Served, tmp_path: Path) -> None:
    cfg = served.config(service={"api_keys": [CONFIG_KEY], "encoder": {"num_cpus": 0.5}})
    with serving_command(cfg, tmp_path, None, host="127.0.0.1", env_vars={KEYS_ENV: ENV_KEY}) as started:
        for key in (CONFIG_KEY, ENV_KEY):
            answer = requests.post(
                started.url + ROUTE,
                params={"api-version": "2024-02-01"},
                json={"text": "a red circle"},
                headers={"Ocp-Apim-Subscription-Key": key},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        refused = requests.post(started.url + ROUTE, params={"api-version": "2024-02-01"}, json={"text": "x"})
        assert refused.status_code == 401
        ray_processes = psutil.Process(started.pid).children(recursive=True)
        names = {p.name() for p in ray_processes}
        assert {"raylet", "gcs_server"} <= names and any("ServeReplica" in n for n in names), names
        for secret in (CONFIG_KEY.encode(), ENV_KEY.encode()):
            holders = [f"{p.pid} {p.name()}" for p in ray_processes if _holds(p, secret)]
            assert not holders, f"{secret!r} reached {holders}"
