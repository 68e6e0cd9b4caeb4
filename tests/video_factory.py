"""Small test videos made on the fly with PyAV from the demo's synthetic shapes, good ones and bad ones.

A shapes video shows one scene per `SCENES` entry, `SCENE_SECONDS` each (0-3 s a red circle, 3-6 s a blue
star, 6-9 s a green triangle), drawn by the renderer the demo model was trained on, with a little motion
so that consecutive frames differ as in real footage.
"""

from __future__ import annotations

import functools
import io
import math
import os
import random
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from embedding.demo.synthetic import BACKGROUNDS, ImageSpec, render

SCENES: tuple[tuple[str, str], ...] = (("red", "circle"), ("blue", "star"), ("green", "triangle"))
SCENE_SECONDS = 3.0


@dataclass(frozen=True)
class Codec:
    """A codec in a container, as PyAV writes them."""

    container: str  # PyAV's muxer name
    codec: str
    pix_fmt: str
    suffix: str
    options: dict[str, str] = field(default_factory=dict)


CODECS: dict[str, Codec] = {
    "h264-mp4": Codec("mp4", "libx264", "yuv420p", ".mp4", {"preset": "veryfast"}),
    "h264-mov": Codec("mov", "libx264", "yuv420p", ".mov", {"preset": "veryfast"}),
    "vp9-webm": Codec("webm", "libvpx-vp9", "yuv420p", ".webm", {"deadline": "realtime", "cpu-used": "8"}),
    "mpeg4-avi": Codec("avi", "mpeg4", "yuv420p", ".avi", {"qscale": "3"}),
    "mjpeg-mkv": Codec("matroska", "mjpeg", "yuvj420p", ".mkv", {"qscale": "3"}),
}


def scene_spec(colour: str, shape: str, width: int, height: int, t: float, seed: int) -> ImageSpec:
    """One frame's shape: centred in the central square, drifting and turning slowly with time."""
    rng = random.Random(f"{seed}-{colour}-{shape}")
    side = min(width, height)
    background = rng.choice([b for b in sorted(BACKGROUNDS) if b != "sky" or colour != "blue"])
    phase = 2 * math.pi * t / SCENE_SECONDS
    return ImageSpec(
        colour=colour,
        shape=shape,
        background=background,
        width=width,
        height=height,
        cx=width / 2 + 0.05 * side * math.sin(phase),
        cy=height / 2 + 0.05 * side * math.cos(phase),
        radius=0.32 * side,
        rotation=-10 + 20 * (t % SCENE_SECONDS) / SCENE_SECONDS,
        fmt="png",
        quality=95,
        noise_seed=rng.getrandbits(31) + round(t * 1000),
        jitter=(0, 0, 0, 0, 0, 0),
    )


def render_scene(
    colour: str, shape: str, width: int = 320, height: int = 240, t: float = 1.0, seed: int = 0
) -> Image.Image:
    """One frame of a scene as a picture (also the still image of that moment)."""
    return render(scene_spec(colour, shape, width, height, t, seed))


@functools.lru_cache(maxsize=8)
def scene_frames(
    fps: float,
    width: int = 320,
    height: int = 240,
    scenes: tuple[tuple[str, str], ...] = SCENES,
    seed: int = 0,
) -> tuple[Image.Image, ...]:
    """The frames of a shapes video, SCENE_SECONDS per scene (rendered once per process: tests reuse them)."""
    per_scene = round(SCENE_SECONDS * fps)
    return tuple(
        render_scene(colour, shape, width, height, (n * per_scene + i) / fps, seed)
        for n, (colour, shape) in enumerate(scenes)
        for i in range(per_scene)
    )


def write_video(
    frames: Iterable[Image.Image | np.ndarray],
    fps: float = 4,
    codec: str = "h264-mp4",
    gop: int | None = None,
    faststart: bool = False,
    rotation: int = 0,
    sample_aspect: Fraction | None = None,
    pts_s: Iterable[float] | None = None,
) -> bytes:
    """Encode RGB frames into one video file's bytes.

    `gop`: frames between keyframes (exactly: no extra keyframes at scene changes). `rotation`: the
    display matrix's counter-clockwise angle. `pts_s`: each frame's time, for variable frame rates.
    """
    spec = CODECS[codec]
    if faststart:  # the muxer reopens its output to move the index to the front: a real file
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "video" + spec.suffix)
            _encode(path, frames, fps, spec, gop, rotation, sample_aspect, pts_s, {"movflags": "faststart"})
            with open(path, "rb") as f:
                return f.read()
    buf = io.BytesIO()
    _encode(buf, frames, fps, spec, gop, rotation, sample_aspect, pts_s, {})
    return buf.getvalue()


def _encode(
    target: str | io.BytesIO,
    frames: Iterable[Image.Image | np.ndarray],
    fps: float,
    spec: Codec,
    gop: int | None,
    rotation: int,
    sample_aspect: Fraction | None,
    pts_s: Iterable[float] | None,
    container_options: dict[str, str],
) -> None:
    options = dict(spec.options)
    if gop and spec.codec == "libx264":
        options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    elif gop:
        options.update({"g": str(gop), "sc_threshold": "1000000000", "keyint_min": str(gop)})
    times = iter(pts_s) if pts_s is not None else None
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(target, "w", format=spec.container, options=container_options) as out:
        stream = None
        for image in frames:
            pixels = np.asarray(image)
            if stream is None:
                stream = out.add_stream(spec.codec, rate=rate, options=options)
                stream.height, stream.width = pixels.shape[:2]
                stream.pix_fmt = spec.pix_fmt
                stream.codec_context.thread_count = 1  # the same bytes on every machine
                if times is not None:
                    stream.codec_context.time_base = Fraction(1, 1000)
                if sample_aspect is not None:
                    stream.codec_context.sample_aspect_ratio = sample_aspect
                if rotation:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(next(times) * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        if stream is not None:
            out.mux(stream.encode(None))


def shapes_video(
    codec: str = "h264-mp4", fps: float = 4, width: int = 320, height: int = 240, gop: int | None = None
) -> bytes:
    """The three-scene shapes video (9 s) in one codec."""
    return write_video(scene_frames(fps, width, height), fps, codec, gop=gop)


# Bad videos: each must become one error row with its code.


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def audio_only(seconds: float = 1.0) -> bytes:
    """An MP4 that holds one AAC audio stream (a sine) and no video."""
    buf = io.BytesIO()
    rate = 16_000
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=rate)
        samples = np.sin(2 * np.pi * 440 * np.arange(round(seconds * rate)) / rate).astype(np.float32)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, len(samples), frame_size):
            chunk = samples[None, start : start + frame_size]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def long_video(seconds: float = 7200.0, codec: str = "mjpeg-mkv") -> bytes:
    """A video whose frames span `seconds` (three small frames at its start, middle and end)."""
    frames = [np.full((48, 64, 3), c, np.uint8) for c in (40, 120, 200)]
    return write_video(frames, codec=codec, pts_s=[0.0, seconds / 2, seconds])


def wide_video(width: int = 20_000, height: int = 16) -> bytes:
    """One MJPEG frame far wider than the image limit (JPEG allows up to 65,535 px a side)."""
    return write_video([np.full((height, width, 3), 90, np.uint8)], codec="mjpeg-mkv")


def random_bytes(size: int = 50_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def bad_videos() -> dict[str, bytes]:
    """File name -> bytes of each bad video; the names carry a video suffix whatever the bytes are."""
    good = shapes_video("h264-mp4", fps=2)
    return {
        "truncated.mp4": truncated(good),
        "truncated-faststart.mp4": truncated(write_video(scene_frames(2), 2, faststart=True)),
        "truncated.webm": truncated(shapes_video("vp9-webm", fps=2)),
        "empty.mp4": b"",
        "audio-only.mp4": audio_only(),
        "too-long.mkv": long_video(),
        "too-wide.mkv": wide_video(),
        "random.mp4": random_bytes(),
    }


def write_videos(
    folder: Path, codecs: Iterable[str] = ("h264-mp4", "vp9-webm", "mpeg4-avi")
) -> dict[str, Path]:
    """Write the shapes video in each codec (`shapes-<codec><suffix>`) and every bad video into `folder`
    (for manifests of integration tests); returns file name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"shapes-{name}{CODECS[name].suffix}": shapes_video(name) for name in codecs}
    files.update(bad_videos())
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths
