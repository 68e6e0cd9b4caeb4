"""The search page in a real browser: a screenshot after a search, and the time to first results.

    python -m benchmarks.page [--out docs/search-page.png] [--work /tmp/bench-page] [--query "a red circle"]

Makes the demo sample (384 images) and runs the job on it unless --work already holds them, starts
`embedding serve` on the local Ray (127.0.0.1, a free port), opens the page in Debian's Chromium
(Playwright, headless), types the query and presses Enter. The time from Enter to the first results on
the page is read from the page's own performance marks (`data-first-results-ms`), `--repeat` times; the
desktop screenshot goes to --out and a phone-width one beside it in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from pathlib import Path

from embedding.config import Config

CHROMIUM = "/usr/bin/chromium"


def prepare(work: Path) -> Config:
    """The sample, embedded and indexed (once: reruns of the script reuse them)."""
    from embedding.demo.sample import write_sample
    from embedding.index.store import index_dir

    if not (work / "sample" / "manifest.parquet").exists():
        write_sample(work / "sample", count=384, seed=7)
    cfg = Config.model_validate(
        {
            "input": {"manifest": str(work / "sample" / "manifest.parquet"), "unit_rows": 128},
            "output": {"root": str(work / "out")},
            "model": {"version": "demo"},
            "inference": {"device": "cpu"},
            "index": {"enabled": True, "shards": 2},
            "ray": {"num_cpus": os.cpu_count()},
        }
    )
    if not Path(index_dir(cfg.output.root, "demo"), "index.json").exists():
        from embedding.job.run import run

        run(cfg)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search_once(page, url: str, query: str) -> float:
    """Load the page, search, wait for every visible thumbnail; the page's first-results time in ms."""
    page.goto(url)
    page.wait_for_selector("body[data-ready='true']", state="attached")
    page.fill("#q", query)
    page.press("#q", "Enter")
    page.wait_for_selector("#results[data-state='done'] .result")
    page.wait_for_function(
        """() => [...document.querySelectorAll('.result img')]
              .filter(i => i.getBoundingClientRect().top < innerHeight)
              .every(i => i.complete && i.naturalWidth > 0)"""
    )
    return float(page.get_attribute("#results", "data-first-results-ms"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/search-page.png"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-page"))
    parser.add_argument("--query", default="a red circle")
    parser.add_argument("--repeat", type=int, default=5, help="searches timed (after one warm-up)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from embedding.cluster import connect_ray
    from embedding.service.app import start, stop

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = prepare(args.work)
    connect_ray(cfg.ray)
    started = start(cfg, port=free_port())
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
            search_once(page, started.url + "/", args.query)  # warm-up: thumbnails cached, model warm
            times = [search_once(page, started.url + "/", args.query) for _ in range(args.repeat)]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
            search_once(phone, started.url + "/", args.query)
            phone.screenshot(path=str(args.work / "search-page-phone.png"))
            overflow = phone.evaluate("document.documentElement.scrollWidth - innerWidth")
            browser.close()
    finally:
        stop()
    print(
        json.dumps(
            {
                "query": args.query,
                "first_results_ms": [round(t, 1) for t in times],
                "first_results_ms_median": round(statistics.median(times), 1),
                "screenshot": str(args.out),
                "phone_screenshot": str(args.work / "search-page-phone.png"),
                "phone_horizontal_overflow_px": overflow,
                "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
