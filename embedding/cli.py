"""The `embedding` command line: models, sample, run, index, search, serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from embedding.errors import ConfigError, EmbeddingError, SinkError


def _models(args: argparse.Namespace) -> int:
    from embedding.config_file import load_config
    from embedding.models.registry import describe_versions, register_architectures

    register_architectures()
    cfg = load_config(args.config, args.set or []) if args.config else None
    rows = describe_versions(cfg.model if cfg else None)
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
    from embedding.cluster import leave_ray
    from embedding.config_file import load_config
    from embedding.job.run import run
    from embedding.job.summary import Phases, one_line, save_summary

    overrides = list(args.set or [])
    if args.retry_errors:
        overrides.append("run.retry_errors=true")
    if args.mode:
        overrides.append(f"run.mode={args.mode}")
    cfg = load_config(args.config, overrides)
    phases = Phases()  # from the process's start: the driver's own start-up is part of a run's time
    summary = run(cfg, phases)
    leave_ray()
    phases.end("shutdown")
    summary["phases_s"] = phases.to_dict()
    save_summary(cfg, summary["run_id"], summary)
    print(one_line(cfg, summary))
    return 0


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
    from embedding.config_file import load_config
    from embedding.service.app import Started, serve_until_stopped

    def started(where: Started) -> None:
        for note in where.notes:
            print(note)
        print(
            f"serving model versions {', '.join(where.versions)} (default {where.default}) at "
            f"{where.url}\n  search page: {where.url}/\n  hosted API: {where.url}/computervision/"
            f"retrieval:vectorizeImage?api-version=2024-02-01 (and :vectorizeText)"
        )
        if where.metrics_url:
            print(f"  Serve's Prometheus metrics: {where.metrics_url}")
        print("Ctrl-C stops the service.", flush=True)

    serve_until_stopped(load_config(args.config, args.set or []), args.host, args.port, started)
    return 0


def _sink(args: argparse.Namespace) -> int:
    """Bring the config's sinks (or the named ones) up to date with the committed units."""
    from embedding.config_file import load_config
    from embedding.sinks.deliver import deliver_now

    for name, what in deliver_now(load_config(args.config, args.set or []), args.name).items():
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
    overrides = argparse.ArgumentParser(add_help=False)  # every command that reads a config
    overrides.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    configured = argparse.ArgumentParser(add_help=False, parents=[overrides])  # CONFIG first, then the rest
    configured.add_argument("config")

    models = commands.add_parser("models", help="list model versions", parents=[overrides])
    models.add_argument("--config", help="a config that adds versions")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)

    sample = commands.add_parser("sample", help="write synthetic sample images and their manifest")
    sample.add_argument("out_dir")
    sample.add_argument("--count", type=int, default=384)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=_sample)

    run = commands.add_parser(
        "run", help="the job: embeddings, errors, summary, then the index if enabled", parents=[configured]
    )
    run.add_argument("--retry-errors", action="store_true", help="also retry permanent errors of done units")
    run.add_argument("--mode", choices=["resume", "overwrite"], help="override run.mode")
    run.set_defaults(func=_run)

    index = commands.add_parser(
        "index", help="the index stage alone (or --verify an existing index)", parents=[configured]
    )
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

    search = commands.add_parser("search", help="text or image query against the index", parents=[configured])
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
    search.set_defaults(func=_search)

    duplicates = commands.add_parser(
        "duplicates",
        help="groups of exact and near-duplicate images of the index (duplicates/ folder)",
        parents=[configured],
    )
    duplicates.add_argument("--cosine", type=float, help="near copies: at least this cosine (default 0.97)")
    duplicates.set_defaults(func=_duplicates)

    serve = commands.add_parser(
        "serve",
        help="the hosted API's routes, search and the search page over HTTP (Ray Serve)",
        parents=[configured],
    )
    serve.add_argument("--host", help="address to listen on (default service.host; 127.0.0.1 without keys)")
    serve.add_argument("--port", type=int, help="port to listen on (default service.port, 8000)")
    serve.set_defaults(func=_serve)

    sink = commands.add_parser(
        "sink", help="bring the config's sinks up to date with the committed units", parents=[configured]
    )
    sink.add_argument("--name", action="append", help="only this sink (repeatable)")
    sink.set_defaults(func=_sink)
    demo = commands.add_parser(
        "demo", help="make the sample data if missing, then run configs/local.yaml", parents=[overrides]
    )
    demo.add_argument("--config", default="configs/local.yaml")
    demo.add_argument("--count", type=int, default=384, help="sample images to make when missing")
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
