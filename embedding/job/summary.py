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

from embedding.config import Config
from embedding.job.commit import Totals
from embedding.job.plan import PlanCounts
from embedding.redact import strip_userinfo
from embedding.store.files import filesystem, write_atomic


class Phases:
    """Where a run's time went, as consecutive named spans from the process's start (the driver's own
    start-up first), so a user sees what was fixed cost and what was work."""

    def __init__(self, started: float | None = None) -> None:
        self.origin = started if started is not None else process_started()
        self.last = self.origin
        self.spans: dict[str, float] = {}

    def end(self, name: str) -> None:
        """Close the span `name` (it ran from the previous span's end until now)."""
        now = time.time()
        self.spans[name] = round(self.spans.get(name, 0.0) + now - self.last, 3)
        self.last = now

    def to_dict(self) -> dict[str, float]:
        return {**self.spans, "total": round(time.time() - self.origin, 3)}


def process_started() -> float:
    """When this process started (the clock of time.time()); now, where the system does not say."""
    try:
        import psutil

        return psutil.Process().create_time()
    except (ImportError, OSError):
        return time.time()


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
    fs, base = filesystem(cfg.output.root, cfg.output.storage_options)
    path = posixpath.join(base, "runs", run_id, name)
    write_atomic(fs, path, text)
    return path


def save_config(cfg: Config, run_id: str) -> str:
    """Save the resolved config beside the outputs, before any work starts."""
    return _write(cfg, run_id, "config.yaml", cfg.to_yaml())


def _stage(totals: Totals, stage: str) -> dict[str, float]:
    rows = totals.rows.get(stage, 0)
    if not rows:
        return {"rows": 0, "busy_s": 0.0, "wall_s": 0.0, "rows_per_s": 0.0, "rows_per_busy_s": 0.0}
    busy_s = totals.busy_s[stage]
    wall = max(totals.last_t1[stage] - totals.first_t0[stage], 1e-9)
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
    totals: Totals,
    rounds: dict[str, int],
    started: float,
    phases: Phases | None = None,
) -> dict[str, Any]:
    wall = time.time() - started
    failed = sum(totals.failed_by_code.values())
    processed = totals.embedded + totals.videos + failed
    encode = _stage(totals, "encode")
    encode["wait_s"] = round(totals.encode_wait_s, 3)
    if totals.frames:  # a video's frames are rows of the stages: frames/s says how fast video goes
        encode["frames_per_s"] = round(totals.frames / encode["wall_s"], 2) if encode["wall_s"] else 0.0
    return {
        "run_id": run_id,
        "model_version": cfg.model.version,
        "kind": kind,
        "mode": cfg.run.mode,
        "output_root": strip_userinfo(cfg.output.root),
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "wall_s": round(wall, 3),
        "rows": {
            "in": counts.rows_in,
            "new": counts.new,
            "retried": totals.retried,
            "adopted": totals.adopted,
            "skipped_done": counts.skipped_done + counts.retry_planned - totals.retried,
            "embedded": totals.embedded,
            "videos": totals.videos,
            "frames": totals.frames,
            "failed": failed,
            "failed_by_code": dict(sorted(totals.failed_by_code.items())),
        },
        "units": {
            "total": counts.units_total,
            "skipped": counts.units_skipped,
            "committed": totals.units_committed,
            "superseded_retired": counts.units_superseded,
        },
        "rounds": rounds,
        "rows_per_s": round(processed / wall, 2) if wall else 0.0,
        "phases_s": phases.to_dict() if phases is not None else {},
        "stages": {
            "fetch_decode": _stage(totals, "decode"),
            "encode": encode,
            "write": {
                "rows": processed,
                "busy_s": round(totals.write_s, 3),
                "rows_per_s": round(processed / totals.write_s, 2) if totals.write_s else 0.0,
                "commit_s": round(totals.commit_s, 3),
            },
        },
        "versions": package_versions(),
    }


def save_summary(cfg: Config, run_id: str, summary: dict[str, Any]) -> str:
    return _write(cfg, run_id, "summary.json", json.dumps(summary, indent=2))


def one_line(cfg: Config, summary: dict[str, Any]) -> str:
    """What `embedding run` prints at the end: the rows' fates, the rates and where the summary is."""
    rows = summary["rows"]
    done = rows["embedded"] + rows["videos"] + rows["failed"]
    pipeline = summary["phases_s"].get("pipeline") or 0.0
    total = summary["phases_s"]["total"]
    videos = f", {rows['videos']} videos ({rows['frames']} frames)" if rows["videos"] else ""
    return (
        f"run {summary['run_id']}: {rows['in']} rows in, {rows['embedded']} embedded{videos}, "
        f"{rows['failed']} failed, {rows['skipped_done']} skipped as done, {rows['retried']} retried, "
        f"{rows['adopted']} taken over; {done / pipeline if pipeline else 0:.1f} rows/s in the pipeline, "
        f"{done / total if total else 0:.1f} rows/s for the whole run ({total:.1f} s); "
        f"summary in {cfg.output.root}/runs/{summary['run_id']}/summary.json"
    )
