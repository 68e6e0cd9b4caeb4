"""Video rows: recognising a container from its first bytes, and sampling frames into model-ready pixels.

A sampled frame becomes exactly what an image becomes: uint8 pixels at the model's input size, made by
`embedding.media.image.resize_crop` from the frame's RGB picture. The cheap parts are chosen to keep that
promise: only the frames that are kept are converted to RGB, and they are converted straight to a reduced
size (`Preprocess.draft_gap` x the model's resolution, as JPEGs are drafted), so the final resample sees
the same kind of input as for a still image. Frames that no sample needs are not decoded at all where the
stream allows it (embedding/media/frames.py says how).

Untrusted input: the demuxer is forced to the container that the bytes were sniffed as (never FFmpeg's
auto-detection, which would accept playlists that name other files), and the limits are checked from the
headers before any frame is decoded. Every failure is an `EmbeddingError` with its row's error code.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal

import av
import numpy as np

from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch.sources import classify
from embedding.media.frames import FrameSampler
from embedding.media.imagecheck import ImageLimits, check_dimensions
from embedding.media.resize import Preprocess

if TYPE_CHECKING:
    from embedding.config import Config

# The container signatures all lie in the first 12 bytes, except Matroska's DocType ("webm"), which an
# EBML header places within its first 40 or so.
SNIFF_BYTES = 64

# ISO base media brands of still images (HEIF, AVIF, Canon raw): they are routed to the image decoder.
_IMAGE_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
    | {b"avif", b"avis", b"avio", b"crx "}
)
# Top-level boxes that old QuickTime files may start with (they predate the ftyp box).
_QUICKTIME_BOXES = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
# Our container names -> the FFmpeg demuxer that reads them.
DEMUXERS = {"mp4": "mov", "mov": "mov", "matroska": "matroska", "webm": "matroska", "avi": "avi"}


def sniff_video(head: bytes) -> str | None:
    """The container of a file from its first `SNIFF_BYTES` bytes: "mp4", "mov", "matroska", "webm",
    "avi", or None for anything else (images, audio-only RIFF/WAV, random bytes).

    An MP4 that holds only audio (M4A) is still "mp4": it is a video container, and decoding it reports
    that it has no video stream.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if len(head) >= 8 and head[4:8] in _QUICKTIME_BOXES:
        size = int.from_bytes(head[:4], "big")
        return "mov" if size in (0, 1) or size >= 8 else None
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML
        return "webm" if b"webm" in head[:SNIFF_BYTES] else "matroska"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


@dataclass(frozen=True)
class VideoSettings:
    """The `video` section and the video limits flattened to plain values (cheap to ship to Ray workers)."""

    sample: Literal["interval", "keyframes"] = "interval"
    frame_interval_s: float = 1.0
    max_frames: int = 600
    max_seconds: float = 3600.0
    max_bytes: int = 2 * 1024**3
    decode_threads: int = 0  # 0: FFmpeg picks (one per core)

    @classmethod
    def from_config(cls, cfg: Config) -> VideoSettings:
        video, limits = cfg.video, cfg.limits
        return cls(
            sample=video.sample,
            frame_interval_s=video.frame_interval_s,
            max_frames=video.max_frames,
            max_seconds=limits.max_video_seconds,
            max_bytes=limits.max_video_bytes,
            decode_threads=video.decode_threads,
        )


@dataclass
class VideoFrame:
    """One sampled frame: its position in the video and its pixels at the model's input size."""

    frame_index: int  # position among the video's frames in display order (0-based)
    frame_time_s: float  # seconds from the start of the video
    pixels: np.ndarray  # (height, width, 3) uint8, the model's input size
    width: int  # of the frame as displayed (rotation and pixel aspect applied)
    height: int


@dataclass
class VideoFrames:
    """Every sampled frame of one video, with what its headers say."""

    container: str  # as sniff_video names it
    codec: str
    width: int  # as displayed (the first sampled frame's)
    height: int
    duration_s: float | None  # from the headers; None when they do not say
    frames: list[VideoFrame]

    @property
    def pixels(self) -> np.ndarray:
        """All frames' pixels stacked, (N, height, width, 3) uint8."""
        return np.stack([f.pixels for f in self.frames])


def _invalid(message: str) -> EmbeddingError:
    return EmbeddingError(ErrorCode.INVALID_VIDEO_FORMAT, message)


class _GuardedSource(io.RawIOBase):
    """The caller's file object as FFmpeg reads it, remembering the first exception the source raised.

    FFmpeg turns a failed read into its own generic error; the remembered exception keeps the real cause,
    so a network failure becomes FetchFailed or Timeout rather than InvalidVideoFormat.
    """

    def __init__(self, source: BinaryIO):
        super().__init__()
        self.source = source
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.source.read(size)
        except Exception as exc:
            self.error = self.error or exc
            raise

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self.source.seek(offset, whence)
        except Exception as exc:
            self.error = self.error or exc
            raise

    def tell(self) -> int:
        return self.source.tell()


def sample_frames(
    source: BinaryIO, prep: Preprocess, settings: VideoSettings, limits: ImageLimits, name: str = "video"
) -> VideoFrames:
    """Sample one video, read from a seekable binary file object that is never loaded whole.

    Interval mode keeps the first frame at or after each multiple of `frame_interval_s`; keyframe mode
    decodes keyframes only and keeps the first keyframe at or after each such time (so all of them when
    they lie an interval or more apart, as in most H.264 and VP9 files; one a second of an all-keyframe
    MJPEG file). When the headers give a duration and the video would yield more than
    `max_frames` samples, the spacing widens to duration / max_frames, so the samples cover the whole
    video; without a duration, sampling stops after `max_frames`. Raises EmbeddingError: InvalidVideoFormat,
    VideoTooLong, InvalidImageDimension, InvalidImageSize (bytes), or the fetch codes when the source's
    reads fail. `name` (a URI, say) goes into the messages.
    """
    guard = _GuardedSource(source)
    error: EmbeddingError | None
    try:
        frames = _open_and_sample(guard, prep, settings, limits, name)
    except EmbeddingError as exc:
        error = exc
    except Exception as exc:  # PyAV and FFmpeg raise many types for malformed input
        detail = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        error = _invalid(f"cannot decode {name}: {detail}")
        error.__cause__ = exc
    else:
        error = None
    if guard.error is not None:
        # The source failed (FFmpeg may have taken it for the end of the file): a fetch error, not the
        # video's fault, and worth retrying.
        raise classify(guard.error, name) from guard.error
    if error is not None:
        raise error
    return frames


def _open_and_sample(
    guard: _GuardedSource, prep: Preprocess, settings: VideoSettings, limits: ImageLimits, name: str
) -> VideoFrames:
    size = guard.seek(0, io.SEEK_END)
    guard.seek(0)
    if size == 0:
        raise _invalid(f"{name} is empty (0 bytes)")
    if size >= settings.max_bytes:
        raise EmbeddingError(
            ErrorCode.INVALID_IMAGE_SIZE,
            f"{name} has {size} bytes; videos must be under {settings.max_bytes} bytes",
        )
    container_name = sniff_video(_read_head(guard))
    guard.seek(0)
    if container_name is None:
        raise _invalid(f"{name} is not a recognised video container (MP4/MOV, MKV/WebM, AVI)")
    with open_video(guard, container_name, limits.max_side) as container:
        return _sample(container, container_name, prep, settings, limits, name)


def open_video(
    source: BinaryIO | io.RawIOBase, container_name: str, max_side: int
) -> av.container.InputContainer:
    """A readable file object opened with the demuxer of its container (a name `sniff_video` gives)."""
    # max_pixels bounds what FFmpeg decodes while probing the streams, before our own checks run.
    probe = {"max_pixels": str(max_side**2)}
    # PyAV takes one dict of options per stream; its stubs say list[str].
    container = av.open(source, format=DEMUXERS[container_name], stream_options=[probe])  # type: ignore[list-item]
    assert isinstance(container, av.container.InputContainer)  # a file without a write mode opens for input
    return container


def _read_head(source: io.RawIOBase) -> bytes:
    head = b""
    while len(head) < SNIFF_BYTES:
        chunk = source.read(SNIFF_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    return head


def _check_sides(width: int, height: int, limits: ImageLimits, name: str) -> None:
    try:
        check_dimensions(width, height, limits)
    except EmbeddingError as exc:
        raise EmbeddingError(
            exc.code,
            f"{name} has frames of {width}x{height} px; each side must be greater than "
            f"{limits.min_side} and less than {limits.max_side}",
        ) from None


def _declared_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """Seconds, from the video stream's header, else the container's; None when neither says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _too_long(name: str, seconds: float, settings: VideoSettings) -> EmbeddingError:
    return EmbeddingError(
        ErrorCode.VIDEO_TOO_LONG,
        f"{name} lasts {seconds:.1f} s; videos may last at most {settings.max_seconds:g} s",
    )


def _sample(
    container: av.container.InputContainer,
    container_name: str,
    prep: Preprocess,
    settings: VideoSettings,
    limits: ImageLimits,
    name: str,
) -> VideoFrames:
    """Check the headers against the limits, then sample the first video stream."""
    if not container.streams.video:
        raise _invalid(f"{name} has no video stream (audio only?)")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    width = round(ctx.width * float(stream.sample_aspect_ratio or 1))
    if not width or not ctx.height:
        raise _invalid(f"{name}: the headers give no frame size")
    _check_sides(width, ctx.height, limits, name)
    duration = _declared_duration(container, stream)
    if duration is not None and duration > settings.max_seconds:
        raise _too_long(name, duration, settings)

    ctx.thread_type = "AUTO"
    ctx.thread_count = settings.decode_threads
    # Samples are spaced by the interval, widened so that max_frames covers the whole video.
    step = settings.frame_interval_s
    if duration:
        step = max(step, duration / settings.max_frames)
    sampler = FrameSampler(
        stream,
        prep,
        step,
        keyframes=settings.sample == "keyframes",
        max_frames=settings.max_frames,
        max_seconds=settings.max_seconds,
        check_size=lambda w, h: _check_sides(w, h, limits, name),
        too_long=lambda seconds: _too_long(name, seconds, settings),
    )
    samples = sampler.run(container.demux(stream))
    if not samples:
        raise _invalid(f"{name}: no frame could be decoded")
    extent = sampler.extent
    if not sampler.stopped and duration is not None and extent < duration - max(1.0, 0.05 * duration):
        raise _invalid(f"{name} is truncated: its data ends at {extent:.1f} s of {duration:.1f} s")
    pts = sorted(sampler.packet_pts)
    rate = float(stream.average_rate or 0)
    frames = [
        VideoFrame(
            # Position in display order: the packets shown before this frame (or its time x frame rate).
            frame_index=bisect.bisect_left(pts, s.pts) if pts else round(s.time_s * rate),
            frame_time_s=round(s.time_s, 6),
            pixels=s.pixels,
            width=s.width,
            height=s.height,
        )
        for s in samples
    ]
    return VideoFrames(
        container=container_name,
        codec=ctx.name,
        width=frames[0].width,
        height=frames[0].height,
        duration_s=duration,
        frames=frames,
    )
