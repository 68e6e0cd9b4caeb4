"""Does committed rows/s grow with encoder actors, and where does it stop? 1 to 16 GPU stand-ins.

    python -m benchmarks.scaling [--actors 1 2 4 8 16] [--modes local cluster] [--ms-per-image 1]
                                 [--plot docs/scaling.png]

Each point is one `embedding.job.run.run` in a process of its own mode (`local`: a local Ray of 2 CPUs and
16 simulated GPUs; `cluster`: `ray.cluster_utils.Cluster`, a head for the driver only and --nodes worker
nodes of --node-cpus CPUs and 4 simulated GPUs each, every node with its own raylet and object store, so
blocks really move between stores). The encoder is `benchmarks.standin:GpuStandInStage` (each batch of 256
images held for --ms-per-image ms a row, sleeping: a GPU's cost is wall time, not the CPU's), one simulated
GPU and no CPU per actor, `min_actors = max_actors` = the point's actor count, and Ray Data waits for every
actor before the first block; decoding is `benchmarks.standin:instant_decode` (pixels of the model's size,
not decoded: a real decode of these 32 x 32 JPEGs costs 0.16 ms of CPU a row, which on 2 cores alone would
cap the job at about 12,000 rows/s); the manifest is tiny inline JPEGs (benchmarks/driver.py), 1,024-row
units (the default for these files), the index off.

Per point: rows/s committed (rows over the span from the first encoded batch's start to the last commit),
the driver's CPU per row (its process's CPU time, all threads, over the whole run and over the streaming
span from the first to the last commit), the actors' utilisation (their busy time over actors x span), the
read/decode/write stages' busy seconds per unit, and where the machine's CPU went in the streaming span
(system-wide busy share of the cores; the driver, Ray's own processes, the encoder actors and the task
workers), sampled from /proc every 0.25 s by this script's parent process (the driver pays nothing for it).
Results: docs/benchmarks.md, "scaling".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
FOLDER = Path("/tmp/bench-scaling")


# ---- one mode: runs in a process of its own (Ray and the simulated cluster end with it) ----


KINDS = ("driver", "ray_system", "encoder_actors", "task_workers", "other")


def _cpu_by_process(driver: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) so far of every process on this machine, and what it is."""
    out = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:
            continue
        line = " ".join(proc.info["cmdline"] or ()) or (proc.info["name"] or "")
        if proc.pid == driver:
            kind = "driver"
        elif "EncodeActor" in line:
            kind = "encoder_actors"
        elif line.startswith("ray::"):
            kind = "task_workers"  # read, decode, write tasks and idle workers
        elif any(s in line for s in ("raylet", "gcs_server", "/ray/", "ray/_private", "dashboard")):
            kind = "ray_system"  # raylets (with their object stores), GCS, agents, log monitors
        else:
            kind = "other"
        out[proc.pid] = (kind, times.user + times.system)
    return out


def _machine_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, idle seconds), from /proc/stat."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return sum(t) - idle, idle


def committed_units(results: list) -> list[str]:
    return [u for r in results for u in r.column("unit_id").to_pylist()]


def _mean(results: list, stage: str, field: str) -> float:
    import pyarrow.compute as pc

    total = sum(pc.sum(pc.struct_field(r.column(stage), field)).as_py() or 0.0 for r in results)
    return total / len(committed_units(results))


def _thread_cpu(native_id: int | None) -> float:
    """CPU seconds so far of one thread of this process (0 when unknown or gone)."""
    if native_id is None:
        return 0.0
    try:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _executor_thread() -> int | None:
    """Ray Data's scheduling loop runs in a thread of the driver named after its dataset."""
    import threading

    loops = [t for t in threading.enumerate() if t.name.startswith("StreamingExecutor")]
    return loops[-1].native_id if loops else None


def _point(actors: int, rows: int, address: str | None, ms_per_image: float) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    from benchmarks.driver import manifest
    from embedding.config import Config
    from embedding.job import commit
    from embedding.job.run import run

    source = manifest(FOLDER, rows)
    # (wall, driver CPU, its scheduling loop's CPU, result table) per block of results
    log: list[tuple[float, float, float, pa.Table]] = []
    take = commit.Committer.take
    loop: list[int | None] = []
    commit_cpu = [0.0]  # the project's own work in the driver: taking results and committing units

    def recording_take(self: commit.Committer, results) -> None:
        started = time.thread_time()
        take(self, results)
        commit_cpu[0] += time.thread_time() - started
        if not loop:
            loop.append(_executor_thread())
        # The loop's thread may end before the last results are taken: it then keeps its last reading.
        loop_cpu = max(_thread_cpu(loop[0]), log[-1][2] if log else 0.0)
        log.append((time.time(), time.process_time(), loop_cpu, results))

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        cfg = Config.model_validate(
            {
                "input": {"manifest": [str(source)]},
                "output": {"root": f"{tmp}/out"},
                "model": {"version": "demo"},
                "ray": {"address": address, "progress_bars": False},
                "preprocess": {"stage_function": "benchmarks.standin:instant_decode"},
                "inference": {
                    "device": "cpu",
                    "batch_size": 256,
                    "stage_class": "benchmarks.standin:GpuStandInStage",
                    "min_actors": actors,
                    "max_actors": actors,
                    "num_cpus_per_actor": 0,
                    "num_gpus_per_actor": 1,  # a simulated GPU (the nodes declare them)
                },
                "index": {"enabled": False},
                "run": {"executor": "ray"},
            }
        )
        commit.Committer.take = recording_take  # type: ignore[method-assign]
        cpu0, wall0 = time.process_time(), time.time()
        try:
            summary = run(cfg)
        finally:
            commit.Committer.take = take  # type: ignore[method-assign]
        cpu1, wall1 = time.process_time(), time.time()
    results = [r for *_, r in log]
    committed = [int(pc.sum(r.column("rows")).as_py() or 0) for r in results]
    first_encode = min(pc.min(pc.struct_field(r.column("encode"), "t0")).as_py() for r in results)
    busy = sum(pc.sum(pc.struct_field(r.column("encode"), "busy_s")).as_py() or 0.0 for r in results)
    span = log[-1][0] - first_encode
    streaming_rows = sum(committed[1:])
    streaming_s = log[-1][0] - log[0][0]
    return {
        "actors": actors,
        "rows": rows,
        "embedded": summary["rows"]["embedded"],
        "rows_per_s": rows / span,
        "rows_per_s_streaming": streaming_rows / streaming_s if streaming_s > 0 else None,
        "ideal_rows_per_s": actors * 1000 / ms_per_image,
        "run_wall_s": wall1 - wall0,
        "span_s": span,
        "driver_ms_per_row": (cpu1 - cpu0) / rows * 1000,
        "driver_ms_per_row_streaming": (log[-1][1] - log[0][1]) / streaming_rows * 1000,
        "driver_cores_streaming": (log[-1][1] - log[0][1]) / streaming_s,
        # Of the driver's CPU: Ray Data's scheduling loop (its own thread, polling at least 10 times a second
        # whatever the rows/s), while streaming; and the run's start-up (planning, Ray Data's operators and
        # actor classes) up to the first commit.
        "loop_ms_per_row_streaming": (log[-1][2] - log[0][2]) / streaming_rows * 1000,
        "loop_cores_streaming": (log[-1][2] - log[0][2]) / streaming_s,
        "driver_startup_cpu_s": log[0][1] - cpu0,
        "commit_ms_per_row": commit_cpu[0] / rows * 1000,
        "actor_utilisation": busy / (actors * span),
        "encode_wait_s_per_actor": summary["stages"]["encode"]["wait_s"] / actors,
        # Where a unit's time went outside the actors: the stages' busy seconds per unit (mean), and the
        # share of the span their task slots were busy (ray_executor: writers = max(2, cluster CPUs)).
        "decode_s_per_unit": _mean(results, "decode", "busy_s"),
        "write_s_per_unit": sum(pc.sum(r.column("write_s")).as_py() or 0.0 for r in results)
        / len(committed_units(results)),
        "t_first_commit": log[0][0],
        "t_last_commit": log[-1][0],
        "results_received": sum(r.num_rows for r in results),
        "result_bytes_per_unit": sum(r.nbytes for r in results) / sum(r.num_rows for r in results),
    }


class Sampler:
    """CPU of every process on this machine and of the machine itself, every `every` s, from this (the
    benchmark's parent) process, so that the driver pays nothing for it and processes that exit (the actors,
    when their last batch is done) are still counted up to their last sample."""

    def __init__(self, driver: int, every: float = 0.25):
        import threading

        self.samples: list[tuple[float, tuple[float, float], dict[int, tuple[str, float]]]] = []
        self.driver, self.every = driver, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _machine_busy(), _cpu_by_process(self.driver)))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, t0: float, t1: float) -> dict:
        """Cores used between t0 and t1 (the samples around them), by kind, and the machine's busy share."""
        before = [s for s in self.samples if s[0] <= t0]
        first = before[-1] if before else self.samples[0]
        span = [s for s in self.samples if first[0] <= s[0] <= t1]
        last = span[-1]
        seconds = last[0] - first[0]
        cores = dict.fromkeys(KINDS, 0.0)
        latest: dict[int, tuple[str, float]] = {}
        for _, _, procs in span:
            latest.update(procs)  # a process that exited keeps its last reading
        for pid, (kind, cpu) in latest.items():
            cores[kind] += cpu - first[2].get(pid, (kind, 0.0))[1]
        busy, idle = last[1][0] - first[1][0], last[1][1] - first[1][1]
        return {
            "machine_busy": busy / (busy + idle),
            "cores_by_kind": {k: round(v / seconds, 3) for k, v in cores.items()},
            "sampled_s": seconds,
        }


def one_mode(mode: str, actor_counts: list[int], args: argparse.Namespace) -> list[dict]:
    import ray
    import ray.data

    simulated = None
    if mode == "cluster":
        from ray.cluster_utils import Cluster

        simulated = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
        for _ in range(args.nodes):
            simulated.add_node(
                num_cpus=args.node_cpus, num_gpus=4, object_store_memory=args.store_mb * 1024 * 1024
            )
        simulated.wait_for_nodes()
        ray.init(address=simulated.address, log_to_driver=False)
        address = simulated.address
    else:
        ray.init(num_cpus=2, num_gpus=16, include_dashboard=False, log_to_driver=False)
        address = None
    # Every actor of a point is started before its first block, so the span measures the actors' work.
    ray.data.DataContext.get_current().wait_for_min_actors_s = 600
    points = []
    try:
        for actors in actor_counts:
            rows = max(args.min_rows, actors * args.rows_per_actor)
            point = _point(actors, rows, address, args.ms_per_image)
            point["mode"] = mode
            print(json.dumps(point), flush=True)
            points.append(point)
    finally:
        ray.shutdown()
        if simulated is not None:
            simulated.shutdown()
    return points


# ---- the plot: Pillow only (matplotlib is not a dependency) ----


def plot(points: list[dict], path: Path, ms_per_image: float) -> None:
    from PIL import Image, ImageDraw, ImageFont

    width, height, left, right, top, bottom = 900, 560, 90, 30, 50, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    actors = sorted({p["actors"] for p in points})
    top_rate = max(max(a * 1000 / ms_per_image for a in actors), max(p["rows_per_s"] for p in points))
    step = 2000 if top_rate <= 20000 else 5000
    y_max = (int(top_rate) // step + 1) * step
    x_max = max(actors)

    def xy(a: float, r: float) -> tuple[float, float]:
        return (
            left + a / x_max * (width - left - right),
            height - bottom - r / y_max * (height - top - bottom),
        )

    for r in range(0, y_max + 1, step):  # grid and y ticks
        y = xy(0, r)[1]
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 10, y), f"{r:,}", fill="black", font=font, anchor="rm")
    for a in [0, *actors]:
        x = xy(a, 0)[0]
        draw.line([(x, height - bottom), (x, height - bottom + 5)], fill="black")
        draw.text((x, height - bottom + 8), str(a), fill="black", font=font, anchor="mt")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    draw.text(
        ((left + width - right) / 2, height - 25), "encoder actors", fill="black", font=font, anchor="mm"
    )
    draw.text((left, 20), "committed rows/s", fill="black", font=font, anchor="lm")

    def series(pairs: list[tuple[float, float]], colour: tuple[int, int, int], dashed: bool = False) -> None:
        coords = [xy(a, r) for a, r in pairs]
        for (x0, y0), (x1, y1) in itertools.pairwise(coords):
            if not dashed:
                draw.line([(x0, y0), (x1, y1)], fill=colour, width=3)
                continue
            n = max(1, int(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 // 8))
            for i in range(0, n, 2):
                a, b = i / n, min(1.0, (i + 1) / n)
                draw.line(
                    [(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                    fill=colour,
                    width=2,
                )
        for x, y in coords:
            if not dashed:
                draw.ellipse([(x - 5, y - 5), (x + 5, y + 5)], fill=colour)

    legend = [
        (
            "ideal: actors x the stand-in's rate",
            (120, 120, 120),
            True,
            [(0, 0)] + [(a, a * 1000 / ms_per_image) for a in actors],
        )
    ]
    colours = {"local": (31, 119, 180), "cluster": (230, 120, 20)}
    names = {"local": "local Ray (2 CPUs)", "cluster": "simulated cluster (4 worker nodes)"}
    for mode in ("local", "cluster"):
        mine = sorted((p["actors"], p["rows_per_s"]) for p in points if p["mode"] == mode)
        if mine:
            legend.append((names[mode], colours[mode], False, mine))
    for i, (label, colour, dashed, pairs) in enumerate(legend):
        series(pairs, colour, dashed)
        y = top + 10 + 22 * i
        draw.line([(left + 20, y), (left + 50, y)], fill=colour, width=3)
        draw.text((left + 58, y), label, fill="black", font=font, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def table(points: list[dict]) -> str:
    """One markdown table per mode, one row per actor count (docs/benchmarks.md, "scaling")."""
    out = []
    for mode in dict.fromkeys(p["mode"] for p in points):
        mine = [p for p in points if p["mode"] == mode]
        base = next((p["rows_per_s"] for p in mine if p["actors"] == 1), mine[0]["rows_per_s"])
        out += [
            f"{mode}:",
            "",
            "| actors | rows/s | rows | ideal | x 1 actor | actor utilisation"
            " | driver CPU/row, run / streaming (Ray Data's loop; commits) | driver cores (loop)"
            " | machine busy | cores: ray system / actors / task workers / other |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in mine:
            k = p["cores_by_kind"]
            out.append(
                f"| {p['actors']} | {p['rows_per_s']:,.0f} | {p['rows']:,} | {p['ideal_rows_per_s']:,.0f}"
                f" | {p['rows_per_s'] / base:.1f}x | {p['actor_utilisation']:.0%}"
                f" | {p['driver_ms_per_row']:.3f} / {p['driver_ms_per_row_streaming']:.3f}"
                f" ({p['loop_ms_per_row_streaming']:.3f}; {p['commit_ms_per_row']:.4f}) ms"
                f" | {p['driver_cores_streaming']:.3f} ({p['loop_cores_streaming']:.3f})"
                f" | {p['machine_busy']:.0%}"
                f" | {k['ray_system']:.2f} / {k['encoder_actors']:.2f} / {k['task_workers']:.2f}"
                f" / {k['other']:.2f} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--modes", nargs="+", default=["local", "cluster"], choices=["local", "cluster"])
    parser.add_argument(
        "--ms-per-image", type=float, default=1.0, help="the stand-in model's wall time a row"
    )
    parser.add_argument("--rows-per-actor", type=int, default=8192, help="rows of a point, per actor")
    parser.add_argument("--min-rows", type=int, default=20_000, help="rows of a point, at least")
    parser.add_argument("--nodes", type=int, default=4, help="worker nodes of the simulated cluster")
    parser.add_argument("--node-cpus", type=int, default=2, help="CPUs each simulated node declares")
    parser.add_argument("--store-mb", type=int, default=2048, help="object store of each simulated node")
    parser.add_argument("--plot", type=Path, help="write the PNG here (e.g. docs/scaling.png)")
    parser.add_argument("--json", type=Path, default=FOLDER / "scaling.json")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = parser.parse_args()
    FOLDER.mkdir(exist_ok=True)
    if args.mode:
        points = one_mode(args.mode, args.actors, args)
        (FOLDER / f"{args.mode}.json").write_text(json.dumps(points))
        return
    points = []
    env = {
        **{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": "disabled",
        "STANDIN_MS_PER_IMAGE": str(args.ms_per_image),
    }
    forwarded = [
        *("--actors", *map(str, args.actors)),
        *("--ms-per-image", str(args.ms_per_image), "--rows-per-actor", str(args.rows_per_actor)),
        *("--min-rows", str(args.min_rows), "--nodes", str(args.nodes), "--node-cpus", str(args.node_cpus)),
        *("--store-mb", str(args.store_mb)),
    ]
    for mode in args.modes:
        started = time.time()
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scaling", "--mode", mode, *forwarded], env=env, cwd=REPO
        )
        sampler = Sampler(child.pid)
        if child.wait() != 0:
            raise SystemExit(f"the {mode} runs failed")
        sampler.stop()
        for point in json.loads((FOLDER / f"{mode}.json").read_text()):
            points.append({**point, **sampler.window(point["t_first_commit"], point["t_last_commit"])})
        print(f"{mode}: {time.time() - started:.0f} s", flush=True)
    args.json.write_text(json.dumps(points, indent=1))
    print(table(points))
    if args.plot:
        plot(points, args.plot, args.ms_per_image)


if __name__ == "__main__":
    main()
