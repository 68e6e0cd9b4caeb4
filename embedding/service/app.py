"""Building and starting the Serve application of `embedding serve`.

    HTTP --> HAProxy (or Serve's Python proxy) --> ingress (FastAPI; forms batches: service.calls)
        --> encoder-<version>  (one per served version: the model, a batch per call)
        --> search-<version>   (one per served version: its index, memory-mapped)

`build` is the application builder that a Serve config file names (configs/serve.yaml, for `serve
deploy` on a cluster); its arguments are the project config. `start` is what `embedding serve` and the
tests call: it joins Ray as the job does (embedding.cluster), starts Serve with the body-limit middleware
and, where an HAProxy is found on this machine (`service.proxy`), in Serve's high-throughput mode, and
runs the application. Without API keys the service binds 127.0.0.1 only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve import Application, Deployment

from embedding.cluster import connect_ray
from embedding.config import Config
from embedding.config_file import describe_errors
from embedding.errors import ConfigError
from embedding.models.registry import check_available, get_version
from embedding.service.body import LIMIT_ENV, PROXY_CALLBACK
from embedding.service.encoders import EncoderDeployment
from embedding.service.haproxy import (
    HIGH_THROUGHPUT,
    note_local_ray,
    private_haproxy_files,
    ray_answers,
    starts_local_ray,
    stop_processes,
    uses_haproxy,
)
from embedding.service.ingress import Ingress
from embedding.service.searcher import SearchDeployment
from embedding.service.security import KEYS_ENV, LOOPBACK, api_key_digests, forget_keys_env
from embedding.store import faults

log = logging.getLogger(__name__)

APP_NAME = "embedding"
# How often Serve checks that a replica is alive (Serve's default: 10 s). A replica that died is replaced
# once a check finds it dead, and requests wait (or get 503) meanwhile: check often, it costs one call.
HEALTH_CHECK_PERIOD_S = 2.0
INGRESS_MAX_ONGOING = 1024  # the ingress mostly awaits other deployments: many requests per replica


def served_versions(cfg: Config) -> tuple[list[str], str]:
    """(served versions, the default one); every version's weights must be on this machine."""
    versions = list(dict.fromkeys(cfg.service.versions or [cfg.model.version]))
    default = cfg.service.default_version or (
        cfg.model.version if cfg.model.version in versions else versions[0]
    )
    if default not in versions:
        raise ConfigError(
            f"service.default_version '{default}' is not among service.versions ({', '.join(versions)})"
        )
    for version in versions:
        check_available(version, cfg.model)
    return versions, default


def _gpus(cfg: Config) -> float:
    if cfg.service.encoder.num_gpus is not None:
        return cfg.service.encoder.num_gpus
    from embedding.cluster import gpus_per_actor  # the job's rule: the config, else 1 when Ray has GPUs

    return gpus_per_actor(cfg)


def _encoder_options(cfg: Config, version: str) -> dict[str, Any]:
    svc = cfg.service.encoder
    options: dict[str, Any] = {
        "name": f"encoder-{version}",
        "max_ongoing_requests": svc.max_ongoing_requests,
        "max_queued_requests": svc.max_queued_requests,
        "ray_actor_options": {"num_cpus": svc.num_cpus, "num_gpus": _gpus(cfg)},
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
    }
    if svc.max_replicas and svc.max_replicas > svc.min_replicas:
        options["autoscaling_config"] = {
            "min_replicas": svc.min_replicas,
            "max_replicas": svc.max_replicas,
            "target_ongoing_requests": svc.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = svc.min_replicas
    return options


def _deployment(decorated: object) -> Deployment:
    """A class under @serve.deployment, as what it is at run time (mypy keeps a decorated class's type)."""
    assert isinstance(decorated, Deployment)
    return decorated


def build_app(
    cfg: Config, key_digests: tuple[str, ...] | None = None, env: dict[str, str] | None = None
) -> Application:
    """The application: an ingress, and an encoder and a search deployment per served version.

    `env`: environment variables of every replica (`start` gives them Serve's own; a Serve config file
    names them in the application's runtime_env instead).
    """
    versions, default = served_versions(cfg)
    digests = api_key_digests(cfg.service) if key_digests is None else key_digests
    if not digests:
        log.warning("no API keys (service.api_keys, %s): keep the service on 127.0.0.1", KEYS_ENV)
    cfg_json = replica_config_json(cfg)
    env = {**(env or {}), **faults.armed_env()}
    runtime = {"runtime_env": {"env_vars": env}} if env else {}
    encoders = {}
    for v in versions:
        options = _encoder_options(cfg, v)
        options["ray_actor_options"].update(runtime)
        encoders[v] = _deployment(EncoderDeployment).options(**options).bind(cfg_json, v)
    search = _deployment(SearchDeployment)
    searchers = {
        v: search.options(
            name=f"search-{v}",
            num_replicas=cfg.service.search_replicas,
            max_ongoing_requests=INGRESS_MAX_ONGOING,
            health_check_period_s=HEALTH_CHECK_PERIOD_S,
            ray_actor_options={"num_cpus": 0, **runtime},  # memory-mapped search: light
        ).bind(cfg_json, v)
        for v in versions
    }
    ingress = _deployment(Ingress).options(
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        # The encoder's queue is the one that fills (its 429 carries the hosted envelope); this one only
        # guards the ingress itself, and Serve answers it with a bare 429 and Retry-After.
        max_queued_requests=4 * INGRESS_MAX_ONGOING,
        backpressure_config={"status_code": 429, "retry_after_s": cfg.service.retry_after_s},
        ray_actor_options={"num_cpus": 0, **runtime},
    )
    specs = {
        v: {"dim": spec.dim, "languages": spec.languages, "description": spec.description}
        for v, spec in ((v, get_version(v, cfg.model)) for v in versions)
    }
    return ingress.bind(cfg_json, specs, default, list(digests), encoders, searchers)


def replica_config_json(cfg: Config) -> str:
    """The config the deployments get, as JSON: without the API keys (the ingress gets their digests),
    which would otherwise sit in every replica, in Serve's controller and in its deployment records."""
    service = cfg.service.model_copy(update={"api_keys": []})
    return cfg.model_copy(update={"service": service}).model_dump_json()


def build(args: dict[str, Any]) -> Application:
    """The application builder of a Serve config file: `args` is the project config (as YAML)."""
    try:
        cfg = Config.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, "(Serve application args)")) from None
    return build_app(cfg)


def serve_env(cfg: Config, haproxy: bool) -> dict[str, str]:
    """Environment of Serve's controller (inherited by what serves HTTP) and of every replica: the
    body-limit middleware of whatever answers HTTP, and with HAProxy, Serve's high-throughput mode."""
    env = {
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": PROXY_CALLBACK,
        LIMIT_ENV: str(cfg.limits.max_image_bytes),
    }
    if not haproxy:
        return env
    # A call between replicas carries a batch of image files whole: let it, up to gRPC's own ceiling.
    most = cfg.service.encoder.max_batch_size * cfg.limits.max_image_bytes + (1 << 20)
    return {**env, **HIGH_THROUGHPUT, "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(min(most, 2**31 - 1))}


@dataclass
class Started:
    url: str
    versions: list[str]
    default: str
    keys: bool
    notes: list[str] = field(default_factory=list)
    metrics_url: str | None = None


def _metrics_url() -> str | None:
    """Where this node's Ray exports Prometheus metrics (Serve's among them)."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


def start(cfg: Config, host: str | None = None, port: int | None = None) -> Started:
    """Start (or update) the application on the Ray the config names; returns where it listens."""
    versions, default = served_versions(cfg)
    digests = api_key_digests(cfg.service)
    forget_keys_env()  # before Ray starts a process: only the digests leave this one
    host = host or cfg.service.host
    port = cfg.service.port if port is None else port
    notes = []
    if not digests:
        asked = f" (not {host})" if host != LOOPBACK else ""
        notes.append(
            f"no API keys (service.api_keys or {KEYS_ENV}): listening on {LOOPBACK} only{asked}, "
            "so that nothing outside this machine can call the service"
        )
        host = LOOPBACK
    haproxy = uses_haproxy(cfg)
    env = serve_env(cfg, haproxy)
    own_ray = starts_local_ray(cfg.ray)
    connect_ray(cfg.ray)
    if own_ray:
        note_local_ray()  # a Ray of this process's own: it stops with the service (stop_processes)
    if haproxy:
        env.update(private_haproxy_files(cfg))
        stats = env.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404")
        metrics = env.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101")
        notes.append(
            f"HTTP through HAProxy (Serve's high-throughput mode); its read-only stats page (port {stats}) "
            f"and Prometheus metrics (port {metrics}) listen on all addresses"
        )
    try:
        # Options apply when Serve starts; a Serve already running on the cluster keeps its own.
        serve.start(
            http_options={"host": host, "port": port},
            controller_options={"runtime_env": {"env_vars": env}},
        )
        serve.run(build_app(cfg, digests, env), name=APP_NAME, route_prefix="/", blocking=False)
    except BaseException:
        stop_processes()
        raise
    return Started(f"http://{host}:{port}", versions, default, bool(digests), notes, _metrics_url())


def stop() -> None:
    """Remove the application and shut Serve down (its proxies and controller, HAProxy among them), then end
    what must not outlive the service: HAProxy if it still runs, a Ray of its own, HAProxy's folder."""
    try:
        if ray_answers():
            serve.shutdown()
    finally:
        stop_processes()


def serve_until_stopped(
    cfg: Config, host: str | None, port: int | None, started: Callable[[Started], None]
) -> None:
    """`embedding serve`: start, tell `started` where the service listens, and run until Ctrl-C, SIGTERM or
    SIGHUP; then shut Serve down and end what it started."""
    import signal
    import threading

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def handle(handler: Any) -> None:
        for sig in signals:
            signal.signal(sig, handler)

    # Each ends the service the same way, also while it starts: it interrupts what runs, and `stop` runs with
    # them ignored, so that a second one cannot cut it short. Left to their default, SIGHUP (a closed
    # terminal) and a SIGTERM during the start end the process on the spot, and HAProxy, Ray's processes and
    # HAProxy's folder outlive it.
    handle(interrupt)
    try:
        where = start(cfg, host, port)
        handle(interrupt)  # again: starting Ray sets its own for SIGTERM (sys.exit, with no `stop`)
        started(where)
        threading.Event().wait()  # until a signal interrupts it
    except KeyboardInterrupt:
        pass
    finally:
        handle(signal.SIG_IGN)
        stop()
