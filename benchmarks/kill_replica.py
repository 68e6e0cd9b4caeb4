"""An encoder replica killed under load (issue 21): `python -m benchmarks.service --kill-replica`.

For one and for two encoder replicas (`service.encoder.min_replicas`), 32 closed-loop clients send
vectorizeText for --seconds (60 by default) twice: once undisturbed (the baseline), once with the encoder
replica that serves them SIGKILLed at a third of the time (20 s). Every request's outcome is recorded:
its status, whether a 503 carried Retry-After, or no answer at all (a client timeout of 3x the service's
request deadline, or a broken connection). Reported per run: answered requests, failures by status,
requests without an answer, p50/p99 of the 200s; for the killed runs, how long after the kill Serve had
every replica RUNNING again (the replacement's start) and the first 200 of a request sent after the kill
(the service back).

Targets: two replicas, 0 failed requests and p99 under 2x the baseline's; one replica, 0 requests
without an answer, every failure a 503 with Retry-After, the service back within the replacement's start.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from embedding.config import Config

ROUTE = "/computervision/retrieval:vectorizeText"
ENCODER = "encoder-demo"


@dataclass
class Outcomes:
    began: list[float] = field(default_factory=list)  # when each request was sent (perf_counter)
    ended: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)  # 0: no answer
    retry_after: list[bool] = field(default_factory=list)


async def _load(url: str, texts: list[str], clients: int, seconds: float, timeout_s: float) -> Outcomes:
    out = Outcomes()
    counter = itertools.count()
    stop_at = time.perf_counter() + seconds
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as s:

        async def client() -> None:
            while (began := time.perf_counter()) < stop_at:
                body = {"text": texts[next(counter) % len(texts)]}
                try:
                    async with s.post(url + ROUTE, params={"api-version": "2024-02-01"}, json=body) as a:
                        await a.read()
                        status, retry = a.status, "Retry-After" in a.headers
                except (aiohttp.ClientError, TimeoutError):
                    status, retry = 0, False
                out.began.append(began)
                out.ended.append(time.perf_counter())
                out.status.append(status)
                out.retry_after.append(retry)

        await asyncio.gather(*(client() for _ in range(clients)))
    return out


def _encoder_pids() -> list[int]:
    """The encoder replicas' processes, by the title Ray gives an actor's process."""
    import psutil

    title = f"ServeReplica:embedding:{ENCODER}"
    return [p.pid for p in psutil.process_iter(["cmdline"]) if title in " ".join(p.info["cmdline"] or [])]


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get("embedding")
    states = app.deployments[ENCODER].replica_states if app and ENCODER in app.deployments else {}
    return int(states.get("RUNNING", 0))


def _kill_later(at: float, replicas: int, record: dict[str, Any]) -> threading.Thread:
    """At perf_counter `at`, SIGKILL one encoder replica; then note when all `replicas` run again."""

    def run() -> None:
        time.sleep(max(0.0, at - time.perf_counter()))  # a benchmark's schedule, not a test's wait
        record["killed_at"] = time.perf_counter()
        os.kill(_encoder_pids()[0], signal.SIGKILL)
        while _running_replicas() >= replicas:  # until Serve has noticed the death
            time.sleep(0.05)
        while _running_replicas() < replicas:
            time.sleep(0.05)
        record["replicas_back_s"] = round(time.perf_counter() - record["killed_at"], 2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _summary(out: Outcomes, seconds: float, killed_at: float | None) -> dict[str, Any]:
    status = np.array(out.status)
    latency = np.array(out.ended) - np.array(out.began)
    ok = latency[status == 200]
    failed = status[(status != 200) & (status != 0)]
    summary: dict[str, Any] = {
        "requests": len(status),
        "ok_per_s": round(len(ok) / seconds, 1),
        "p50_ms": round(float(np.percentile(ok, 50)) * 1000, 1),
        "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 1),
        "failed": {str(s): int((failed == s).sum()) for s in sorted(set(failed.tolist()))},
        "failed_without_retry_after": int(
            ((status != 200) & (status != 0) & ~np.array(out.retry_after)).sum()
        ),
        "no_answer": int((status == 0).sum()),
    }
    if killed_at is not None:
        after = [
            e for b, e, s in zip(out.began, out.ended, out.status, strict=True) if b > killed_at and s == 200
        ]
        summary["first_ok_after_kill_s"] = round(min(after) - killed_at, 2) if after else None
    return summary


def kill_replica(base: Config, seconds: float, clients: int = 32) -> dict[str, Any]:
    """The baseline and the killed run, for one and two encoder replicas."""
    from benchmarks.service import TEXTS, free_port
    from embedding.service.app import start, stop

    results: dict[str, Any] = {}
    for replicas in (1, 2):
        tree = base.model_dump()
        tree["service"]["encoder"].update(min_replicas=replicas, max_queued_requests=-1)
        cfg = Config.model_validate(tree)
        timeout_s = 3 * cfg.service.request_timeout_s
        started = start(cfg, port=free_port())
        try:
            asyncio.run(_load(started.url, TEXTS, clients, 2.0, timeout_s))  # warm-up
            runs = {
                "baseline": _summary(
                    asyncio.run(_load(started.url, TEXTS, clients, seconds, timeout_s)), seconds, None
                )
            }
            record: dict[str, Any] = {}
            killer = _kill_later(time.perf_counter() + seconds / 3, replicas, record)
            out = asyncio.run(_load(started.url, TEXTS, clients, seconds, timeout_s))
            killer.join(timeout=120)
            runs["killed"] = {**_summary(out, seconds, record.get("killed_at")), **record}
            runs["killed"].pop("killed_at", None)
            results[f"{replicas}_replica{'s' if replicas > 1 else ''}"] = runs
        finally:
            stop()
    return results
