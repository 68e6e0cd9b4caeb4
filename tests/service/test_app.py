"""The application builder and the Serve config file for clusters (`embedding serve` itself: test_page)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.service import haproxy as service_haproxy
from embedding.service.app import build, serve_env, served_versions, stop
from embedding.service.body import LIMIT_ENV, PROXY_CALLBACK
from embedding.service.haproxy import HIGH_THROUGHPUT, private_haproxy_files, uses_haproxy

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
    # What `embedding serve` sets for Serve and its replicas, but the drain period (clusters keep Ray's).
    wanted = serve_env(cfg, haproxy=True)
    del wanted["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]
    for names in (env, app.runtime_env["env_vars"]):
        assert {k: names.get(k) for k in wanted} == wanted


def test_what_answers_http(monkeypatch: pytest.MonkeyPatch) -> None:
    on_linux = Config()
    assert uses_haproxy(on_linux)  # ray[serve] bundles an HAProxy on Linux
    python = Config.model_validate({"service": {"proxy": "python"}})
    assert not uses_haproxy(python)
    assert not set(HIGH_THROUGHPUT) & set(serve_env(python, haproxy=False))
    env = serve_env(on_linux, haproxy=True)
    assert set(HIGH_THROUGHPUT) <= set(env) and env[LIMIT_ENV] == str(on_linux.limits.max_image_bytes)
    assert int(env["RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH"]) > 32 * on_linux.limits.max_image_bytes
    monkeypatch.setattr(service_haproxy, "haproxy_available", lambda: False)
    assert not uses_haproxy(on_linux)  # auto: Serve's Python proxy
    with pytest.raises(ConfigError, match="no HAProxy was found"):
        uses_haproxy(Config.model_validate({"service": {"proxy": "haproxy"}}))


def test_served_versions() -> None:
    assert served_versions(Config()) == (["demo"], "demo")
    with pytest.raises(ConfigError, match=r"not among service\.versions"):
        served_versions(Config.model_validate({"service": {"default_version": "x", "versions": ["demo"]}}))
    with pytest.raises(ConfigError, match="2022-04-11"):  # its weights are not on this machine
        served_versions(Config.model_validate({"service": {"versions": ["demo", "2022-04-11"]}}))


def test_the_builder_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'service.bogus'"):
        build({"service": {"bogus": 1}})


def test_haproxys_files_go_to_a_folder_only_this_user_can_enter(ray_local) -> None:
    env = private_haproxy_files()  # the shared local Ray: every node is this machine
    folder = Path(env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700
    for name in service_haproxy.HAPROXY_FILES:
        assert Path(env[name]).parent == folder
        # Ray adds a folder of 56 characters; HAProxy refuses socket paths over 97.
        assert len(env[name]) + 57 <= 97
    stats, metrics = int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])
    assert stats != metrics and 8404 not in (stats, metrics)  # free ports, not HAProxy's fixed ones
    stop()  # removes it (and shuts down a Serve that is not running: nothing)
    assert not folder.exists()
