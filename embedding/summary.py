"""The run record: `<output>/runs/<run_id>/config.yaml` (resolved) and `summary.json`."""

from __future__ import annotations

import json
import platform
import posixpath
import secrets
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from fsspec.core import url_to_fs

from embedding.config import Config
from embedding.plan import PlanCounts
from embedding.rows import METRIC_PREFIX
from embedding.sink import SinkStats


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("embedding", "ray", "torch", "open_clip_torch", "pyarrow", "faiss-cpu", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _write(cfg: Config, run_id: str, name: str, text: str) -> str:
    fs, base = url_to_fs(cfg.output.root, **cfg.output.storage_options)
    path = posixpath.join(base, "runs", run_id, name)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)
    return path


def save_config(cfg: Config, run_id: str) -> str:
    """Save the resolved config beside the outputs, before any work starts."""
    return _write(cfg, run_id, "config.yaml", cfg.to_yaml())


def _stage(metrics: dict[str, list[np.ndarray]], stage: str) -> dict[str, float]:
    busy = metrics.get(f"{METRIC_PREFIX}{stage}_s")
    if not busy:
        return {"rows": 0, "busy_s": 0.0, "wall_s": 0.0, "rows_per_s": 0.0}
    rows = int(sum(len(b) for b in busy))
    busy_s = float(sum(b.sum() for b in busy))
    t0 = min(float(a.min()) for a in metrics[f"{METRIC_PREFIX}{stage}_t0"])
    t1 = max(float(a.max()) for a in metrics[f"{METRIC_PREFIX}{stage}_t1"])
    wall = max(t1 - t0, 1e-9)
    return {
        "rows": rows,
        "busy_s": round(busy_s, 3),  # summed over workers
        "wall_s": round(wall, 3),  # first batch start to last batch end
        "rows_per_s": round(rows / wall, 2),
        "rows_per_busy_s": round(rows / busy_s, 2) if busy_s else 0.0,  # per worker
    }


def build_summary(
    cfg: Config,
    run_id: str,
    kind: str,
    counts: PlanCounts,
    stats: SinkStats,
    rounds: dict[str, int],
    started: float,
) -> dict[str, Any]:
    wall = time.time() - started
    failed = sum(stats.errors_by_code.values())
    processed = stats.rows_embedded + failed
    encode = _stage(stats.metrics, "encode")
    wait = stats.metrics.get(f"{METRIC_PREFIX}encode_wait_s")
    encode["wait_s"] = round(float(sum(w.sum() for w in wait)), 3) if wait else 0.0
    return {
        "run_id": run_id,
        "model_version": cfg.model.version,
        "kind": kind,
        "mode": cfg.run.mode,
        "output_root": cfg.output.root,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "wall_s": round(wall, 3),
        "rows": {
            "in": counts.rows_in,
            "new": counts.new,
            "retried": counts.retried,
            "skipped_done": counts.skipped_done,
            "embedded": stats.rows_embedded,
            "failed": failed,
            "failed_by_code": dict(sorted(stats.errors_by_code.items())),
        },
        "units": {
            "total": counts.units_total,
            "skipped": counts.units_skipped,
            "committed": stats.units_committed,
        },
        "rounds": rounds,
        "rows_per_s": round(processed / wall, 2) if wall else 0.0,
        "stages": {
            "fetch_decode": _stage(stats.metrics, "decode"),
            "encode": encode,
            "write": {
                "rows": processed,
                "busy_s": round(stats.write_seconds, 3),
                "rows_per_s": round(processed / stats.write_seconds, 2) if stats.write_seconds else 0.0,
            },
        },
        "versions": package_versions(),
    }


def save_summary(cfg: Config, run_id: str, summary: dict[str, Any]) -> str:
    return _write(cfg, run_id, "summary.json", json.dumps(summary, indent=2))
