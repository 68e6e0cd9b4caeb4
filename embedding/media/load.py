"""One row's media: an image's bytes, or a video's frames, under the same source policy and limits.

What a row is comes from its bytes, never its name: the first bytes are sniffed (embedding.media.video). Most
rows are fetched whole under the image limit (`limits.max_image_bytes`), as before; a fetched file that is
a video is sampled from memory. A file over the image limit may still be a video, up to
`limits.max_video_bytes`: it is then streamed, never held whole in memory: a local file is read in place,
an object on S3/GCS through fsspec's seekable reads, an HTTP(S) body into a private temporary file (under
the network rules, within `fetch.video_timeout_s`).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch import http
from embedding.fetch.sources import check_size, fetch, networks
from embedding.fetch.uripolicy import SourceSettings, check_scheme, local_path
from embedding.media.image import DecodedImage
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess
from embedding.media.video import SNIFF_BYTES, VideoFrames, VideoSettings, sample_frames, sniff_video
from embedding.redact import strip_userinfo


@dataclass(frozen=True)
class MediaSettings:
    source: SourceSettings
    prep: Preprocess
    limits: ImageLimits
    video: VideoSettings


@dataclass
class Fetched:
    """A row's bytes (an image, or a video small enough to hold), or a large video to stream."""

    data: bytes | None
    attempts: int
    uri: str | None = None  # set (and data None) for a video over the image limit


def fetch_media(uri: str | None, inline: bytes | None, settings: MediaSettings) -> Fetched:
    """Fetch a row; raises EmbeddingError. Inline bytes are held already (an inline video too)."""
    if inline is not None:
        check_size(len(inline), settings.video.max_bytes, "the inline bytes")
        return Fetched(inline, 0)
    if not uri:
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW, "the row has neither a uri nor inline image bytes"
        )
    try:
        data, attempts = fetch(uri, settings.source)
    except EmbeddingError as exc:
        if exc.code != ErrorCode.INVALID_IMAGE_SIZE or not _is_video(uri, settings):
            raise
        return Fetched(None, exc.attempts, uri)
    return Fetched(data, attempts)


def is_video(data: bytes) -> bool:
    return sniff_video(data[:SNIFF_BYTES]) is not None


def frames_of(fetched: Fetched, settings: MediaSettings) -> VideoFrames:
    """Sample a video row, from memory or streamed (see the module docstring)."""
    shown = strip_userinfo(fetched.uri) if fetched.uri else "the video"
    if fetched.data is not None:
        return sample_frames(io.BytesIO(fetched.data), settings.prep, settings.video, settings.limits, shown)
    with open_stream(_stream_uri(fetched), settings) as stream:
        return sample_frames(stream, settings.prep, settings.video, settings.limits, shown)


def _stream_uri(fetched: Fetched) -> str:
    assert fetched.uri is not None  # a row without its bytes is a video to stream from its uri
    return fetched.uri


def _is_video(uri: str, settings: MediaSettings) -> bool:
    """Whether an object too large for an image starts like a video (a read of its first bytes)."""
    try:
        with open_stream(uri, settings, head_only=True) as stream:
            return is_video(stream.read(SNIFF_BYTES))
    except (EmbeddingError, OSError):
        return False


@contextlib.contextmanager
def open_stream(uri: str, settings: MediaSettings, head_only: bool = False) -> Iterator[BinaryIO]:
    """A seekable binary stream of a large object, under the source policy (see the module docstring)."""
    source = settings.source
    scheme = check_scheme(uri, source.allowed_schemes)
    if scheme == "file":
        yield _open_local(local_path(uri), settings.video.max_bytes)
    elif scheme in ("http", "https"):
        with _download(uri, scheme, settings, SNIFF_BYTES if head_only else settings.video.max_bytes) as f:
            yield f
    else:
        import fsspec

        fs = fsspec.filesystem(scheme, **source.storage_options.get(scheme, {}))
        size = fs.size(uri)
        if size is not None and size >= settings.video.max_bytes:
            check_size(size, settings.video.max_bytes, strip_userinfo(uri))
        with fs.open(uri, "rb") as f:
            yield f


def _open_local(path: str, max_bytes: int) -> BinaryIO:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device: never opened (open alone could block)
        raise EmbeddingError(ErrorCode.INVALID_MANIFEST_ROW, f"{path} is not a regular file")
    check_size(info.st_size, max_bytes, path)
    return open(path, "rb")


@contextlib.contextmanager
def _download(uri: str, scheme: str, settings: MediaSettings, limit: int) -> Iterator[BinaryIO]:
    """An HTTP(S) body in a private temporary file: at most `limit` bytes, under the network rules."""
    cfg = settings.source.fetch
    policy = http.HttpPolicy(
        allowed_schemes=settings.source.allowed_schemes,
        networks=networks(settings.source.allowed_networks),
        max_redirects=cfg.max_redirects,
        headers=http.header_pairs(settings.source.storage_options.get(scheme)),
    )
    with tempfile.TemporaryFile(prefix="embedding-video-") as f:  # private: 0600, unlinked at once
        deadline = time.monotonic() + cfg.video_timeout_s
        http.get(uri, policy, limit, deadline, sink=f, partial=limit < settings.video.max_bytes)
        if f.tell() >= settings.video.max_bytes:
            check_size(f.tell(), settings.video.max_bytes, strip_userinfo(uri))
        f.seek(0)
        yield f


def decode_row(fetched: Fetched, settings: MediaSettings) -> DecodedImage | VideoFrames:
    """An image's pixels, or a video's sampled frames (raises EmbeddingError with the row's code)."""
    from embedding.media.image import decode

    if fetched.data is None or is_video(fetched.data):
        return frames_of(fetched, settings)
    check_size(len(fetched.data), settings.source.max_bytes, "the image")
    return decode(fetched.data, settings.prep, settings.limits)


def video_still(fetched: Fetched, settings: MediaSettings, time_s: float) -> Image.Image:
    """The picture of a video at a time (its first frame at or after it): the source of a thumbnail."""
    from embedding.media.imagecheck import check_dimensions
    from embedding.media.video import open_video

    shown = strip_userinfo(fetched.uri) if fetched.uri else "the video"
    stream_of = contextlib.nullcontext(io.BytesIO(fetched.data)) if fetched.data is not None else None
    with stream_of or open_stream(_stream_uri(fetched), settings) as source:
        container_name = sniff_video(source.read(SNIFF_BYTES))
        source.seek(0)
        if container_name is None:
            raise EmbeddingError(ErrorCode.INVALID_VIDEO_FORMAT, f"{shown} is not a video")
        try:
            with open_video(source, container_name, settings.limits.max_side) as container:
                if not container.streams.video:
                    raise EmbeddingError(ErrorCode.INVALID_VIDEO_FORMAT, f"{shown} has no video stream")
                stream = container.streams.video[0]
                check_dimensions(stream.codec_context.width, stream.codec_context.height, settings.limits)
                if time_s > 0 and stream.time_base:
                    container.seek(int(time_s / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.time is None or frame.time >= time_s - 1e-3:
                        return frame.to_image()
        except EmbeddingError:
            raise
        except Exception as exc:  # PyAV and FFmpeg raise many types for malformed input
            raise EmbeddingError(ErrorCode.INVALID_VIDEO_FORMAT, f"cannot decode {shown}: {exc}") from exc
    raise EmbeddingError(ErrorCode.INVALID_VIDEO_FORMAT, f"{shown} has no frame at {time_s:.1f} s")
