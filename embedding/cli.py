"""The `embedding` command line: models, sample, run, index, search, serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from embedding.errors import ConfigError, EmbeddingError, SinkError


def _models(args: argparse.Namespace) -> int:
    from embedding.config_file import load_config
    from embedding.models.registry import all_versions, locate_weights, register_architectures

    register_architectures()
    cfg = load_config(args.config, args.set or []) if args.config else None
    rows: list[dict[str, Any]] = []
    for name, spec in all_versions(cfg.model if cfg else None).items():
        location = locate_weights(name, spec)
        rows.append(
            {
                "version": name,
                "architecture": spec.architecture,
                "weights": spec.weights,
                "dim": spec.dim,
                "languages": spec.languages,
                "available": location.available,
                "problem": location.problem,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'version':<12} {'dim':>5}  {'weights here':<12} {'languages':<28} architecture")
    for r in rows:
        langs = ", ".join(r["languages"])
        print(
            f"{r['version']:<12} {r['dim']:>5}  {'yes' if r['available'] else 'no':<12} {langs[:28]:<28} "
            f"{r['architecture']}"
        )
    missing = [r for r in rows if not r["available"]]
    for r in missing:
        print(f"\n{r['version']}: {r['problem']}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from embedding.demo.sample import write_sample

    manifest = write_sample(args.out_dir, args.count, args.seed)
    print(f"wrote {args.count} images and {manifest}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from embedding.config_file import load_config
    from embedding.job.run import run
    from embedding.job.summary import Phases, save_summary

    overrides = list(args.set or [])
    if args.retry_errors:
        overrides.append("run.retry_errors=true")
    if args.mode:
        overrides.append(f"run.mode={args.mode}")
    cfg = load_config(args.config, overrides)
    phases = Phases()  # from the process's start: the driver's own start-up is part of a run's time
    summary = run(cfg, phases)
    _shutdown_ray()
    phases.end("shutdown")
    summary["phases_s"] = phases.to_dict()
    save_summary(cfg, summary["run_id"], summary)
    rows = summary["rows"]
    done = rows["embedded"] + rows["videos"] + rows["failed"]
    pipeline = summary["phases_s"].get("pipeline") or 0.0
    total = summary["phases_s"]["total"]
    videos = f", {rows['videos']} videos ({rows['frames']} frames)" if rows["videos"] else ""
    print(
        f"run {summary['run_id']}: {rows['in']} rows in, {rows['embedded']} embedded{videos}, "
        f"{rows['failed']} failed, {rows['skipped_done']} skipped as done, {rows['retried']} retried, "
        f"{rows['adopted']} taken over; {done / pipeline if pipeline else 0:.1f} rows/s in the pipeline, "
        f"{done / total if total else 0:.1f} rows/s for the whole run ({total:.1f} s); "
        f"summary in {cfg.output.root}/runs/{summary['run_id']}/summary.json"
    )
    return 0


def _shutdown_ray() -> None:
    """Stop the local Ray a run started (timed as the run's last phase); a cluster is only left."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _index(args: argparse.Namespace) -> int:
    from embedding.config_file import load_config
    from embedding.index.build import build_index
    from embedding.index.search import Index
    from embedding.index.store import index_dir

    cfg = load_config(args.config, args.set or [])
    folder = index_dir(cfg.output.root, cfg.model.version)
    if args.verify:
        index = Index.open(folder, cfg.output.storage_options, verify=True)
        print(f"index {folder}: {index.manifest.rows} rows in {len(index.shards)} shards; checksums verified")
        return 0
    asked = "rebuild" if args.rebuild else "compact" if args.compact else "auto"
    manifest = build_index(cfg, asked=asked)
    change = manifest.change
    what = f"{change.action} ({change.reason})" if change else "unchanged"
    took = f" in {change.seconds} s" if change and change.action != "none" else ""
    print(
        f"index {folder}: {what}{took}\n  {manifest.kind} ({manifest.factory}), {manifest.rows} rows in "
        f"{len(manifest.shards)} shards, recall@10 {manifest.self_check.get('recall_at_k')}"
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from embedding.api import search
    from embedding.config_file import load_config
    from embedding.index.filters import every
    from embedding.index.where import parse_where

    overrides = list(args.set or [])
    if args.group_videos is not None:
        overrides.append(f"search.group_videos={str(args.group_videos).lower()}")
    cfg = load_config(args.config, overrides)
    if (args.text is None) == (args.image is None):
        raise ConfigError("give either a query TEXT or --image PATH_OR_URL")
    query = args.image if args.image is not None else args.text
    # Each --filter and the --where parse alone (an error points into the text given), then all must pass.
    clauses = [*(args.filter or []), *([args.where] if args.where is not None else [])]
    where = every(*(parse_where(clause) for clause in clauses))
    hits = search(
        query,
        cfg,
        top=args.top,
        image=args.image is not None,
        sink=args.sink,
        where=where,
        dedup=args.dedup,
    )
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], ensure_ascii=False, indent=1))
        return 0
    print(f"{'#':>3} {'relevance':>9} {'cosine':>8} {'meta':>5}  {'image_id':<24} uri")
    for rank, h in enumerate(hits, 1):
        moment, span = "", h.segment
        if span is not None:
            moment = f"  [{span['start_s']:.1f}-{span['end_s']:.1f} s, best {span['frame_time_s']:.1f} s]"
        elif h.metadata.get("frame_time_s") is not None:
            moment = f"  [frame at {h.metadata['frame_time_s']:.1f} s]"
        scores = f"{h.relevance:9.4f} {h.cosine:8.4f} {h.metadata_score:5.2f}"
        similar = f"  (+{len(h.similar)} similar: {', '.join(h.similar)})" if h.similar else ""
        print(f"{rank:>3} {scores}  {h.image_id:<24} {h.uri}{moment}{similar}")
    return 0


def _duplicates(args: argparse.Namespace) -> int:
    from embedding.config_file import load_config
    from embedding.index.duplicates import find_duplicates

    cfg = load_config(args.config, args.set or [])
    found = find_duplicates(cfg, args.cosine)
    print(json.dumps(found.to_dict(), indent=1))
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run the service until Ctrl-C, SIGTERM or SIGHUP, then shut Serve down and end what it started."""
    import signal
    import threading

    from embedding.config_file import load_config
    from embedding.service.app import start, stop

    cfg = load_config(args.config, args.set or [])
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
        started = start(cfg, args.host, args.port)
        handle(interrupt)  # again: starting Ray sets its own for SIGTERM (sys.exit, with no `stop`)
        for note in started.notes:
            print(note)
        print(
            f"serving model versions {', '.join(started.versions)} (default {started.default}) at "
            f"{started.url}\n  search page: {started.url}/\n  hosted API: {started.url}/computervision/"
            f"retrieval:vectorizeImage?api-version=2024-02-01 (and :vectorizeText)"
        )
        if started.metrics_url:
            print(f"  Serve's Prometheus metrics: {started.metrics_url}")
        print("Ctrl-C stops the service.", flush=True)
        threading.Event().wait()  # until a signal interrupts it
    except KeyboardInterrupt:
        pass
    finally:
        handle(signal.SIG_IGN)
        stop()
    return 0


def _sink(args: argparse.Namespace) -> int:
    """Bring the config's sinks (or the named ones) up to date with the committed units."""
    import secrets

    from embedding.config_file import load_config
    from embedding.sinks.deliver import deliver
    from embedding.store.lease import Lease
    from embedding.store.partition import Partition

    cfg = load_config(args.config, args.set or [])
    unknown = set(args.name or []) - {s.name for s in cfg.sinks}
    if unknown or not cfg.sinks:
        have = ", ".join(s.name for s in cfg.sinks) or "none"
        raise ConfigError(f"no sink named {', '.join(sorted(unknown)) or 'in the config'} (sinks: {have})")
    partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
    run_id = "sink-" + secrets.token_hex(4)
    with Lease(partition, run_id, cfg.run.lease_timeout_s, purpose="sink delivery"):
        done = deliver(cfg, on_ray=False, names=args.name)
    for name, what in done.items():
        print(
            f"sink {name}: {what['written_units']} units ({what['written_rows']} rows) written, "
            f"{what['retired_units']} retired, in {what['seconds']} s"
        )
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The quick start: make the sample data if it is missing, then run the local config end to end."""
    import os

    from embedding.config_file import load_config
    from embedding.demo.sample import write_sample

    cfg = load_config(args.config, args.set or [])
    for manifest in cfg.input.manifest:
        if "://" not in manifest and not os.path.exists(manifest):
            print(f"making the sample data: {os.path.dirname(manifest)}")
            write_sample(os.path.dirname(manifest), args.count)
    return _run(argparse.Namespace(config=args.config, set=args.set, retry_errors=False, mode=None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedding", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list model versions")
    models.add_argument("--config", help="a config that adds versions")
    models.add_argument("--set", action="append", metavar="KEY=VALUE")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)

    sample = commands.add_parser("sample", help="write synthetic sample images and their manifest")
    sample.add_argument("out_dir")
    sample.add_argument("--count", type=int, default=384)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_sample)

    run = commands.add_parser("run", help="the job: embeddings, errors, summary, then the index if enabled")
    run.add_argument("config")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--retry-errors", action="store_true", help="also retry permanent errors of done units")
    run.add_argument("--mode", choices=["resume", "overwrite"], help="override run.mode")
    run.set_defaults(func=_run)

    index = commands.add_parser("index", help="the index stage alone (or --verify an existing index)")
    index.add_argument("config")
    index.add_argument("--set", action="append", metavar="KEY=VALUE")
    index.add_argument("--verify", action="store_true", help="check every shard file's SHA-256")
    how = index.add_mutually_exclusive_group()
    how.add_argument(
        "--rebuild",
        "--force",
        action="store_true",
        help="train and fill anew, even where an update would do (or nothing changed)",
    )
    how.add_argument("--compact", action="store_true", help="merge delta shards and drop retired rows now")
    index.set_defaults(func=_index)

    search = commands.add_parser("search", help="text or image query against the index")
    search.add_argument("config")
    search.add_argument("text", nargs="?", help="a query text of 1 to 70 words")
    search.add_argument("--image", help="a query image: path or URL")
    search.add_argument("--top", type=int)
    search.add_argument(
        "--where",
        metavar="EXPRESSION",
        help="keep rows that pass a filter: \"taken_at >= 2024-01-01 and 'red' in tags\" (README: Filters)",
    )
    search.add_argument(
        "--filter",
        action="append",
        metavar="CLAUSE",
        help="a filter clause, e.g. tags=red or 'price < 10' (repeatable: all must pass; with --where too)",
    )
    search.add_argument(
        "--dedup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold near-duplicates into the better result (default: search.dedup, off)",
    )
    search.add_argument("--json", action="store_true")
    search.add_argument("--sink", metavar="NAME", help="search this sink's table instead of the index")
    search.add_argument(
        "--group-videos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="video frames as segments with their times (default: search.group_videos, on)",
    )
    search.add_argument("--set", action="append", metavar="KEY=VALUE")
    search.set_defaults(func=_search)

    duplicates = commands.add_parser(
        "duplicates", help="groups of exact and near-duplicate images of the index (duplicates/ folder)"
    )
    duplicates.add_argument("config")
    duplicates.add_argument("--cosine", type=float, help="near copies: at least this cosine (default 0.97)")
    duplicates.add_argument("--set", action="append", metavar="KEY=VALUE")
    duplicates.set_defaults(func=_duplicates)

    serve = commands.add_parser(
        "serve", help="the hosted API's routes, search and the search page over HTTP (Ray Serve)"
    )
    serve.add_argument("config")
    serve.add_argument("--host", help="address to listen on (default service.host; 127.0.0.1 without keys)")
    serve.add_argument("--port", type=int, help="port to listen on (default service.port, 8000)")
    serve.add_argument("--set", action="append", metavar="KEY=VALUE")
    serve.set_defaults(func=_serve)

    sink = commands.add_parser("sink", help="bring the config's sinks up to date with the committed units")
    sink.add_argument("config")
    sink.add_argument("--name", action="append", help="only this sink (repeatable)")
    sink.add_argument("--set", action="append", metavar="KEY=VALUE")
    sink.set_defaults(func=_sink)
    demo = commands.add_parser("demo", help="make the sample data if missing, then run configs/local.yaml")
    demo.add_argument("--config", default="configs/local.yaml")
    demo.add_argument("--count", type=int, default=384, help="sample images to make when missing")
    demo.add_argument("--set", action="append", metavar="KEY=VALUE")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return args.func(args)
    except (ConfigError, EmbeddingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SinkError as exc:  # the embeddings are committed; a sink is behind
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
