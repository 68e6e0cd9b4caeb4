"""Service benchmark (issue 12): the hosted API's routes under concurrent clients, and search over HTTP.

    python -m benchmarks.service [--clients 1,8,32,64] [--seconds 10] [--search-rows 1000000 | --reuse]
                                 [--proxy auto|haproxy|python]
    python -m benchmarks.service --kill-replica [--seconds 60]    (benchmarks.kill_replica)

All in one run on this machine, against the real server (`embedding.service.app.start`, local Ray):

1. vectorizeText and vectorizeImage (the demo sample's small JPEGs, 2-21 KB) with dynamic batching on
   (service.encoder defaults: up to 32 requests per model call, 10 ms wait) and off (batch size 1). For each
   mode, route and number of concurrent clients (aiohttp, closed loop: a client sends its next request when
   the last one answered), requests are sent for --seconds after a one-second warm-up; requests/s and the
   p50/p99 latency of the answered requests are reported, and per mode the requests per model call (all
   requests answered over Serve's count of batches the ingress formed; off, every request is a model call).
   The queue limit is lifted: nothing is refused. `--proxy` is `service.proxy` (what answers HTTP; the
   default, auto, is Serve's high-throughput mode with HAProxy where Ray's HAProxy is installed).
2. Search with vector queries: p50 over HTTP (POST /retrieval:search, one client, one query at a time) against
   p50 in-process (`embedding.api.rank`, the code the search deployment runs, one thread) on the same index:
   the clustered vectors of `benchmarks.index` (same generator and queries). Without --reuse the index is
   built here with --search-rows rows (the 1M of issue 12 takes about 8 minutes on a 2-core machine; use a
   smaller --search-rows for a smoke run); with --reuse, the one `python -m benchmarks.index --out DIR` left.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import statistics
import time
from pathlib import Path

import aiohttp
import numpy as np
import requests

from embedding.config import Config

# The ingress's batching functions (one encoder call, one model call, per batch), by route.
FUNCTIONS = {"retrieval:vectorizeText": "_text_batch", "retrieval:vectorizeImage": "_image_batch"}
TEXTS = [
    f"{article} {colour} {shape}"
    for article, colour, shape in itertools.product(
        ["a", "one small", "a big"],
        ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"],
        ["circle", "square", "triangle", "star", "heart", "cross"],
    )
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def load(url: str, route: str, bodies: list[dict], clients: int, seconds: float) -> dict:
    """Closed-loop clients for `seconds` (after a 1 s warm-up): requests/s and latency percentiles."""
    latencies: list[float] = []
    failures = answered = 0
    counter = itertools.count()
    params = {"api-version": "2024-02-01"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        measure_from, stop_at = started + 1.0, started + 1.0 + seconds

        async def client() -> None:
            nonlocal failures, answered
            while (now := time.perf_counter()) < stop_at:
                body = bodies[next(counter) % len(bodies)]
                async with session.post(f"{url}/computervision/{route}", params=params, **body) as answer:
                    await answer.read()
                    ok = answer.status == 200
                answered += ok
                done = time.perf_counter()
                if measure_from <= now and done <= stop_at:
                    if ok:
                        latencies.append(done - now)
                    else:
                        failures += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "clients": clients,
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "failed": failures,
        "answered": answered,  # warm-up included: what the encoder saw
    }


def model_calls(metrics_url: str | None, skip: set[str], timeout_s: float = 30.0) -> dict[str, float]:
    """Model calls (batches) per batched function so far, from Serve's `serve_batches_processed` counter,
    for replicas not in `skip` (an earlier mode's, whose last values the metrics agent may still export).

    Ray exports metrics every few seconds: wait until the counts stop growing (or `timeout_s`). Adds the
    replicas it read to `skip`.
    """
    if not metrics_url:
        return {}
    last: dict[str, float] = {}
    replicas: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts: dict[str, float] = {}
        for line in requests.get(metrics_url, timeout=10).text.splitlines():
            if not line.startswith("ray_serve_batches_processed_total{"):
                continue
            replica = line.split('replica="')[1].split('"')[0] if 'replica="' in line else ""
            if replica in skip:
                continue
            replicas.add(replica)
            name = line.split('function_name="')[1].split('"')[0]
            counts[name] = counts.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        if counts and counts == last:
            break
        last = counts
        time.sleep(3)
    skip |= replicas
    return last


def vectorize(base: Config, images: list[bytes], clients: list[int], seconds: float) -> dict:
    """Both routes at each number of clients, batching on, then off. With it off no batching function
    runs: every request is one encoder call and one model call."""
    from embedding.service.app import start, stop

    bodies = {
        "retrieval:vectorizeText": [{"json": {"text": t}} for t in TEXTS],
        "retrieval:vectorizeImage": [{"data": data} for data in images],
    }
    results: dict = {}
    seen: set[str] = set()
    for batching in (True, False):
        tree = base.model_dump()
        tree["service"]["encoder"].update(batching=batching, max_queued_requests=-1)
        cfg = Config.model_validate(tree)
        started = start(cfg, port=free_port())
        try:
            mode = "batching" if batching else "batch_size_1"
            for route, route_bodies in bodies.items():
                results.setdefault(route, {})[mode] = [
                    asyncio.run(load(started.url, route, route_bodies, c, seconds)) for c in clients
                ]
            calls = model_calls(started.metrics_url, seen)
            results.setdefault("requests_per_model_call", {})[mode] = {
                route: round(sum(p["answered"] for p in results[route][mode]) / calls[function], 2)
                for route, function in FUNCTIONS.items()
                if calls.get(function)
            }
        finally:
            stop()
    return results


def search_index(args: argparse.Namespace) -> tuple[Path, np.ndarray]:
    """An output root holding the clustered index of benchmarks.index, and its queries."""
    from benchmarks.index import Mixture, commit_units
    from embedding.index.build import build_index

    mixture = Mixture(args.clusters)
    if not args.reuse:
        shutil.rmtree(args.index_out, ignore_errors=True)
        args.index_out.mkdir(parents=True)
        commit_units(args.index_out, mixture, args.search_rows, min(50_000, args.search_rows))
        cfg = Config.model_validate(
            {"output": {"root": str(args.index_out / "out")}, "model": {"version": "demo"}}
        )
        build_index(cfg, force=True)
    return args.index_out / "out", mixture.draw(args.queries, seed=10**6)


def search(base: Config, root: Path, queries: np.ndarray) -> dict:
    from embedding.api import Vector, rank
    from embedding.index.search import Index
    from embedding.service.app import start, stop

    cfg = Config.model_validate({**base.model_dump(), "output": {"root": str(root)}})
    index = Index.for_version(str(root), "demo")
    index.threads = 1
    for query in queries[:20]:  # warm-up: page in the memory-mapped files
        rank(index, Vector(query, "demo"), cfg, top=10)
    local = []
    for query in queries:
        started = time.perf_counter()
        rank(index, Vector(query, "demo"), cfg, top=10)
        local.append(time.perf_counter() - started)
    served = start(cfg, port=free_port())
    remote = []
    try:
        with requests.Session() as session:
            body = [{"vector": q.tolist(), "modelVersion": "demo", "top": 10} for q in queries]
            for item in body[:20]:
                session.post(f"{served.url}/retrieval:search", json=item, timeout=60).raise_for_status()
            for item in body:
                started = time.perf_counter()
                session.post(f"{served.url}/retrieval:search", json=item, timeout=60).raise_for_status()
                remote.append(time.perf_counter() - started)
    finally:
        stop()
    in_process, http = statistics.median(local) * 1000, statistics.median(remote) * 1000
    return {
        "rows": index.manifest.rows,
        "kind": index.manifest.kind,
        "factory": index.manifest.factory,
        "queries": len(queries),
        "in_process_p50_ms": round(in_process, 2),
        "http_p50_ms": round(http, 2),
        "http_p99_ms": round(percentile(remote, 99) * 1000, 2),
        "http_over_in_process": round(http / in_process, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument(
        "--seconds",
        type=float,
        help="measured time per point (after 1 s warm-up; default 10, or 60 with --kill-replica)",
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/bench-page"), help="the demo sample (made if missing)"
    )
    parser.add_argument("--search-rows", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index-out", type=Path, default=Path("/tmp/bench-index"))
    parser.add_argument(
        "--reuse", action="store_true", help="search the index benchmarks.index left in --index-out"
    )
    parser.add_argument("--proxy", choices=["auto", "haproxy", "python"], default="auto")
    parser.add_argument("--skip-vectorize", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument(
        "--kill-replica",
        action="store_true",
        help="only the replica-death run (benchmarks.kill_replica); --seconds defaults to 60 there",
    )
    args = parser.parse_args()
    seconds_asked = args.seconds
    args.seconds = args.seconds or 10.0
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from benchmarks.page import prepare

    args.work.mkdir(parents=True, exist_ok=True)
    base = prepare(args.work)  # starts the local Ray with every core when it runs the job
    service = {**base.service.model_dump(), "proxy": args.proxy}
    base = Config.model_validate({**base.model_dump(), "service": service})
    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    from embedding.service.haproxy import uses_haproxy

    result: dict = {
        "machine_cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "http": "haproxy" if uses_haproxy(base) else "python proxy",
    }
    if args.kill_replica:
        from benchmarks.kill_replica import kill_replica

        result["kill_replica"] = kill_replica(base, seconds_asked or 60.0)
        print(json.dumps(result, indent=1))
        return
    if not args.skip_vectorize:
        images = [p.read_bytes() for p in sorted((args.work / "sample" / "images").glob("*.jpg"))[:64]]
        clients = [int(c) for c in args.clients.split(",")]
        result["vectorize"] = vectorize(base, images, clients, args.seconds)
    if not args.skip_search:
        root, queries = search_index(args)
        result["search"] = search(base, root, queries)
    print(json.dumps(result, indent=1))
    for route, modes in result.get("vectorize", {}).items():
        if route == "requests_per_model_call":
            continue
        print(f"\n{route}\n| clients | batching req/s | p50 ms | p99 ms | batch 1 req/s | p50 ms | p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for on, off in zip(modes["batching"], modes["batch_size_1"], strict=True):
            print(
                f"| {on['clients']} | {on['requests_per_s']} | {on['p50_ms']} | {on['p99_ms']} | "
                f"{off['requests_per_s']} | {off['p50_ms']} | {off['p99_ms']} |"
            )


if __name__ == "__main__":
    main()
