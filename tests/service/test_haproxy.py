"""HAProxy in `embedding serve`: its own answers in the hosted error envelope, its request timeout, and its
lifetime: the folder (and processes) of a service that died is removed at the next start, and a stopped
`embedding serve` leaves nothing running.

HAProxy 2.8 (Ray 2.60 bundles it) answers what it finds wrong before a request is read with its built-in
page whatever errorfile says (haproxy/haproxy#3032, fixed in 3.3): those tests are expected to fail there,
and start to pass, and so to fail as XPASS, once Ray bundles an HAProxy with the fix.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from embedding.config import ServiceConfig
from embedding.service.haproxy import (
    OWNER,
    PREFIX,
    error_file,
    haproxy_binary,
    haproxy_errors,
    remove_stale_folders,
)
from embedding.store.lease import start_time, this_process
from tests.service.conftest import REPO, Served, free_port, running, wait_until

BINARY = haproxy_binary() or "haproxy"


def _version() -> tuple[int, int]:
    try:
        found = re.search(
            r"version (\d+)\.(\d+)", subprocess.run([BINARY, "-v"], capture_output=True).stdout.decode()
        )
    except OSError:  # no HAProxy here
        return (0, 0)
    return (int(found[1]), int(found[2])) if found else (0, 0)


HAPROXY = _version()
EARLY_ERRORS_BUILT_IN = pytest.mark.xfail(
    HAPROXY < (3, 3),
    reason=f"HAProxy {HAPROXY}: early errors ignore errorfile (haproxy/haproxy#3032)",
    raises=AssertionError,  # the answer is HAProxy's HTML page, with the right status
    strict=True,
)
TIMEOUT_S = 1


def answer_of(port: int, data: bytes, wait_s: float = 60) -> tuple[int, dict[str, str], bytes, float]:
    """Send raw bytes to the port, read until the server closes: (status, headers, body, seconds taken)."""
    began = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                received += chunk
        except (
            ConnectionResetError,
            BrokenPipeError,
        ):  # closed before reading it all: what came is the answer
            pass
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = _headers(lines[1:])
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    return status, headers, body, time.monotonic() - began


def _headers(lines: list[str]) -> dict[str, str]:
    return {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}


def assert_envelope(
    status: int, headers: dict[str, str], body: bytes, retry_after: int | None = None
) -> None:
    assert headers["content-type"] == "application/json" and headers["x-content-type-options"] == "nosniff"
    error = json.loads(body)["error"]
    assert headers["x-ms-error-code"] == error["code"] and error["message"]
    assert int(headers["content-length"]) == len(body)
    if retry_after is not None:
        assert headers["retry-after"] == str(retry_after) and f"in {retry_after} seconds" in error["message"]


# Requests past HAProxy's limits: a request line and headers must fit in its 16 KiB buffer.
OVERSIZE = {
    "header": b"GET /retrieval/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "path": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "header bytes": b"GET /retrieval/models HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 200) for i in range(100))
    + b"\r\n",
}


def test_error_files_are_the_hosted_envelope() -> None:
    for status, error in haproxy_errors(ServiceConfig(retry_after_s=3, http_request_timeout_s=2.5)).items():
        head, _, body = error_file(error).partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {status} ")
        headers = _headers(lines[1:])
        assert_envelope(status, headers, body, 3 if status == 503 else None)
        assert json.loads(body) == error.body() and error.status == status
    assert "2.5 s" in haproxy_errors(ServiceConfig(http_request_timeout_s=2.5))[408].message


def _dead_process() -> dict:
    """The owner record of a process that ran and is gone."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    record = {**this_process(), "pid": child.pid, "pid_start": start_time(child.pid)}
    child.communicate(b"")
    return record


def _holding(argument: str) -> subprocess.Popen:
    """A process that names the argument (as HAProxy names its config) and runs until its stdin closes."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", argument], stdin=subprocess.PIPE
    )


def _folder(parent: Path, name: str, record: dict | None) -> Path:
    folder = parent / f"{PREFIX}{name}"
    (folder / "node").mkdir(parents=True)
    if record is not None:
        (folder / OWNER).write_text(json.dumps(record))
    return folder


def test_a_dead_services_folder_and_what_runs_from_it_are_removed(tmp_path: Path) -> None:
    leftover = _holding("ray-agent-like")  # as Ray's agents outlive a killed service
    pid_reused = _holding("not-ours")  # its pid is in a record, with another start time
    dead = _folder(
        tmp_path,
        "dead",
        {
            "owner": _dead_process(),
            "ray": [
                [leftover.pid, start_time(leftover.pid), "agent", True],
                [pid_reused.pid, "1", "x", True],
            ],
        },
    )
    orphan = _holding(str(dead / "node" / "haproxy.cfg"))  # an HAProxy whose service died
    live = _folder(tmp_path, "live", {"owner": this_process(), "ray": []})
    serving = _holding(str(live / "node" / "haproxy.cfg"))
    unowned = _folder(tmp_path, "unowned", None)  # being made, or not ours: no owner file
    gone_no_haproxy = _folder(tmp_path, "gone", {"owner": _dead_process(), "ray": []})
    try:
        assert sorted(remove_stale_folders(str(tmp_path))) == [str(dead), str(gone_no_haproxy)]
        assert orphan.wait(timeout=30) is not None and leftover.wait(timeout=30) is not None
        assert live.is_dir() and unowned.is_dir() and not dead.exists()
        assert serving.poll() is None and pid_reused.poll() is None
        assert remove_stale_folders(str(tmp_path)) == []
    finally:
        for p in (leftover, pid_reused, orphan, serving):
            p.kill()
            p.wait()


def test_haproxy_answers_with_the_error_files(tmp_path: Path) -> None:
    """HAProxy itself, given the error files (as `embedding serve` gives them): its 503 when no server
    answers, and each status it answers on a rule, in the envelope."""
    lines = []
    for status, error in haproxy_errors(ServiceConfig(retry_after_s=3)).items():
        if status in (414, 431) and HAPROXY < (3, 1):  # unknown to it: it would not start
            continue
        path = tmp_path / f"{status}.http"
        path.write_bytes(error_file(error))
        lines.append(f"errorfile {status} {path}")
    port, closed = free_port(), free_port()
    rules = "".join(
        f"    http-request deny deny_status {s} if {{ path /{s} }}\n" for s in (400, 408, 413, 502, 504)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n"
        + "".join(f"    {line}\n" for line in lines)
        + f"frontend web\n    bind 127.0.0.1:{port}\n{rules}    default_backend down\n"
        + f"backend down\n    server gone 127.0.0.1:{closed}\n"
    )
    haproxy = subprocess.Popen(
        [BINARY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: _connects(port) or haproxy.poll() is not None, 30, "HAProxy to listen")
        assert haproxy.poll() is None, haproxy.stderr.read() if haproxy.stderr else ""
        for status in (400, 408, 413, 502, 503, 504):
            got, headers, body, _ = answer_of(port, f"GET /{status} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert got == status
            assert_envelope(got, headers, body, 3 if status == 503 else None)
    finally:
        haproxy.kill()
        haproxy.wait()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return True
    except OSError:
        return False


@dataclass
class Service:
    url: str
    port: int  # HAProxy's: it takes HTTP on the service's port
    config: str  # the haproxy.cfg Ray wrote


@pytest.fixture(scope="module")
def service(served: Served) -> Iterator[Service]:
    cfg = served.config(service={"http_request_timeout_s": TIMEOUT_S, "retry_after_s": 3})
    with running(cfg) as url:
        port = int(url.rsplit(":", 1)[1])
        yield Service(url, port, wait_until(lambda: _config_of(port), 30, "Ray's haproxy.cfg"))


def _config_of(port: int) -> str | None:
    for path in Path("/tmp").glob(f"{PREFIX}*/*/haproxy.cfg"):
        try:
            text = path.read_text()
        except OSError:
            continue
        if f"bind 127.0.0.1:{port}\n" in text:
            return text
    return None


def test_rays_haproxy_config_has_the_timeout_and_the_error_files(service: Service) -> None:
    defaults = service.config.split("\ndefaults\n", 1)[1].split("\nfrontend ", 1)[0]
    assert f"timeout http-request {TIMEOUT_S * 1000}ms" in defaults
    ours = dict(re.findall(r"errorfile (\d+) (/tmp/hap-\S+/errors/\d+\.http)", defaults))
    assert {"400", "408", "413", "502", "503", "504"} <= set(ours)
    # After Ray's own ("500" for 502, 503 and 504): the later one wins.
    assert defaults.rindex(ours["503"]) > defaults.index("errorfile 503")
    answer = Path(ours["503"]).read_bytes().partition(b"\r\n\r\n")
    assert b"Retry-After: 3" in answer[0] and json.loads(answer[2])["error"]["code"] == "ServiceUnavailable"


@pytest.mark.parametrize("what", list(OVERSIZE))
def test_requests_past_haproxys_limits_are_refused(service: Service, what: str) -> None:
    status, _, _, _ = answer_of(service.port, OVERSIZE[what])
    assert status in (400, 414, 431)
    assert requests.get(f"{service.url}/retrieval/models", timeout=30).status_code == 200


@EARLY_ERRORS_BUILT_IN
@pytest.mark.parametrize("what", [*OVERSIZE, "slow"])
def test_requests_past_haproxys_limits_get_the_envelope(service: Service, what: str) -> None:
    status, headers, body, _ = answer_of(service.port, OVERSIZE.get(what, b"GET /retrieval/mo"))
    assert status in ((408,) if what == "slow" else (400, 414, 431))
    assert_envelope(status, headers, body)


def test_slow_clients_are_dropped_while_others_are_served(service: Service) -> None:
    slow = [socket.create_connection(("127.0.0.1", service.port), timeout=60) for _ in range(5)]
    try:
        began = time.monotonic()
        for s in slow:
            s.sendall(b"GET /retrieval/mod")  # half a request line, and nothing more
        assert requests.get(f"{service.url}/retrieval/models", timeout=30).status_code == 200
        for s in slow:
            received = b""
            while chunk := s.recv(65536):  # until HAProxy closes it
                received += chunk
            assert received.startswith(b"HTTP/1.1 408 ") or received == b""
        took = time.monotonic() - began
        assert TIMEOUT_S * 0.9 <= took < 30, took
    finally:
        for s in slow:
            s.close()


@pytest.mark.integration
def test_embedding_serve_stopped_by_sigterm_leaves_nothing_running(served: Served, tmp_path: Path) -> None:
    """`embedding serve` with a Ray of its own, stopped as a service manager stops it (SIGTERM to its process
    group): no process of it, no HAProxy and no folder are left. Its start removed a dead service's folder
    (and the HAProxy still running from it), and kept a live one's."""
    dead = _folder(Path("/tmp"), f"test-dead-{os.getpid()}", {"owner": _dead_process(), "ray": []})
    orphan = _holding(str(dead / "node" / "haproxy.cfg"))
    live = _folder(Path("/tmp"), f"test-live-{os.getpid()}", {"owner": this_process(), "ray": []})
    config, log = tmp_path / "serve.yaml", tmp_path / "serve.log"
    config.write_text(yaml.safe_dump(served.config().model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "embedding.cli", "serve", str(config), "--port", str(free_port())]
    with log.open("w") as out:
        serve = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_until(lambda: "Ctrl-C stops the service" in log.read_text() or serve.poll() is not None, 300)
        assert serve.poll() is None, log.read_text()[-3000:]
        assert not dead.exists() and orphan.wait(timeout=30) is not None and live.is_dir()
        processes = psutil.Process(serve.pid).children(recursive=True)
        haproxy = [p for p in processes if "haproxy" in p.name()]
        (folder,) = {arg.split("/")[2] for p in haproxy for arg in p.cmdline() if arg.startswith("/tmp/hap-")}
        assert haproxy and Path("/tmp", folder).is_dir()

        os.killpg(serve.pid, signal.SIGTERM)
        assert serve.wait(timeout=120) == 0, log.read_text()[-3000:]
        wait_until(lambda: not [p for p in processes if _running(p)], 60, "the service's processes to end")
        assert not Path("/tmp", folder).exists()
        assert not [
            p
            for p in psutil.process_iter(["cmdline"])
            if f"/tmp/{folder}/" in " ".join(p.info["cmdline"] or [])
        ]
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        orphan.kill()
        orphan.wait()
        for folder_path in (dead, live):
            subprocess.run(["rm", "-rf", str(folder_path)], check=False)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
