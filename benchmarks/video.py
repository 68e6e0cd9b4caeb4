"""Video frame sampling throughput on one core: embedding.media.video against the naive way.

    python -m benchmarks.video [--seconds 30] [--fps 30] [--gop 60] [--size 224] [--repeat 3]

The script first makes a 1080p H.264 video (libx264, preset veryfast, CRF `--crf`, B-frames, a keyframe every
`--gop` frames) from the demo's synthetic scenes, panning, with sensor-like noise, and caches it under
/tmp. Then, pinned to one CPU core, it times each way of turning the whole video into model-ready uint8
pixels (`--size` px, one frame a second):

- naive: decode every frame, convert each one to a full-size RGB picture, keep one a second and resize
  the kept ones (`embedding.media.image.resize_crop`);
- interval: `embedding.media.video.sample_frames` with `video.sample: interval` (1 s);
- keyframes: the same with `video.sample: keyframes`;
- decode only: every frame decoded and nothing converted, to show what decoding alone costs.

The methods take turns, `--repeat` rounds, and each reports its fastest round. Rates and speed-ups use
the CPU time the process spent (on its one core), which other work on a busy machine does not inflate;
wall time is shown beside it. Frames/s counts the sampled frames; speed-up compares the time per video.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from PIL import Image

from embedding.demo.synthetic import render
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess, resize_crop
from embedding.media.video import VideoSettings, sample_frames
from tests.video_factory import SCENES, scene_spec

CACHE = Path("/tmp/embedding-bench-video")


def make_video(
    path: Path, seconds: int, fps: int, gop: int, crf: int, width: int = 1920, height: int = 1080
) -> None:
    """A panning shapes video with temporal noise, H.264 in MP4, written to `path`."""
    rng = np.random.default_rng(0)
    # Sensor-like noise that differs in every frame: a random window of one larger noise field.
    noise = rng.normal(0, 3, (height + 64, width + 64, 3)).astype(np.int16)
    # Detail at several scales, as a real scene has (flat synthetic colours would compress unrealistically).
    texture = (
        sum(
            np.asarray(
                Image.fromarray(
                    rng.integers(0, 256, (height // s + 1, (width + 256) // s + 1), np.uint8)
                ).resize(((width + 256), height), Image.Resampling.BICUBIC),
                dtype=np.int16,
            )
            - 128
            for s in (4, 16, 64)
        )
        // 8
    )
    pictures = []
    for colour, shape in SCENES:
        # Rendered a little wider than the frame, so that the camera can pan across it.
        picture = render(scene_spec(colour, shape, width + 256, height, 1.0, 0))
        pictures.append(np.asarray(picture, dtype=np.int16) + texture[..., None])
    tmp = path.with_suffix(".part")
    with av.open(str(tmp), "w", format="mp4") as out:
        options = {"preset": "veryfast", "crf": str(crf), "x264-params": f"keyint={gop}:min-keyint={gop}"}
        stream = out.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            scene = pictures[(i * len(pictures)) // (seconds * fps)]
            pan = round(256 * (i % (fps * 10)) / (fps * 10))  # 256 px in 10 s, then back
            dy, dx = rng.integers(0, 64, 2)
            grain = noise[dy : dy + height, dx : dx + width]
            pixels = np.clip(scene[:, pan : pan + width] + grain, 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode(None))
    tmp.rename(path)


def naive(path: Path, prep: Preprocess, interval: float) -> list[np.ndarray]:
    kept, target = [], 0.0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")  # every frame to full-size RGB
            if frame.time is not None and frame.time >= target - 1e-3:
                kept.append(resize_crop(Image.fromarray(rgb), prep))
                target = (math.floor(frame.time / interval + 1e-6) + 1) * interval
    return kept


def decode_only(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def ours(path: Path, prep: Preprocess, settings: VideoSettings) -> list[np.ndarray]:
    with open(path, "rb") as f:
        return list(sample_frames(f, prep, settings, ImageLimits()).pixels)


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(CPU seconds of this process, wall seconds, result) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=60, help="frames between keyframes")
    parser.add_argument("--crf", type=int, default=20, help="x264 quality (lower: more bits)")
    parser.add_argument("--size", type=int, default=224, help="the model's input side")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"1080p-h264-{args.seconds}s-{args.fps}fps-gop{args.gop}-crf{args.crf}.mp4"
    if not path.exists():
        started = time.perf_counter()
        make_video(path, args.seconds, args.fps, args.gop, args.crf)
        print(f"made {path} in {time.perf_counter() - started:.0f} s")
    megabits = path.stat().st_size * 8 / 1e6 / args.seconds
    print(
        f"video: 1920x1080 H.264, {args.seconds} s at {args.fps} fps, keyframes every {args.gop} frames "
        f"and at scene cuts, CRF {args.crf}, {megabits:.1f} Mbit/s"
    )

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    prep = Preprocess(size=(args.size, args.size))
    methods: dict[str, Callable[[], object]] = {
        "naive (every frame to RGB)": lambda: naive(path, prep, 1.0),
        "interval 1 s (embedding.media.video)": lambda: ours(path, prep, VideoSettings()),
        "keyframes (embedding.media.video)": lambda: ours(path, prep, VideoSettings(sample="keyframes")),
        "decode only (no RGB, nothing kept)": lambda: decode_only(path),
    }
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    results: dict[str, object] = {}
    for _ in range(args.repeat):
        for name, fn in methods.items():
            cpu_s, wall_s, results[name] = timed(fn)
            cpu[name] = min(cpu.get(name, math.inf), cpu_s)
            wall[name] = min(wall.get(name, math.inf), wall_s)

    base = cpu["naive (every frame to RGB)"]
    print(f"pinned to CPU core {core}; best of {args.repeat} rounds; pixels {args.size}x{args.size}")
    print("rates and speed-ups use CPU seconds (what the core spent, whatever else ran on it)")
    header = f"{'method':38} {'CPU s':>7} {'wall s':>7} {'video s/s':>10} {'frames':>7} {'frames/s':>9}"
    print(f"{header} {'speed-up':>9}")
    for name, elapsed in cpu.items():
        result = results[name]
        frames = len(result) if isinstance(result, list) else 0
        rate = f"{frames / elapsed:9.1f}" if frames else f"{'-':>9}"
        print(
            f"{name:38} {elapsed:7.2f} {wall[name]:7.2f} {args.seconds / elapsed:10.1f} {frames:7d} {rate} "
            f"{base / elapsed:8.2f}x"
        )
    kept_naive, kept_ours = (
        results["naive (every frame to RGB)"],
        results["interval 1 s (embedding.media.video)"],
    )
    if isinstance(kept_naive, list) and isinstance(kept_ours, list) and len(kept_naive) == len(kept_ours):
        mad = np.mean(
            [np.abs(a.astype(np.int16) - b).mean() for a, b in zip(kept_naive, kept_ours, strict=True)]
        )
        print(f"interval vs naive pixels: mean absolute difference {mad:.2f} levels of 255")


if __name__ == "__main__":
    main()
