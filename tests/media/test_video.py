"""Video rows: sniffing containers, sampling frames, the error codes of bad videos, and with the real demo
model, that the frames of each scene are found by text (three languages) and by a still image."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from embedding.config import Config, InferenceConfig, ModelConfig
from embedding.config_file import load_config
from embedding.demo import captions
from embedding.errors import ConfigError, EmbeddingError, ErrorCode
from embedding.index.relevance import relevance
from embedding.index.segments import FrameHit, Segment, group_segments
from embedding.media import frames as video_sampler
from embedding.media import video as video_module
from embedding.media.frames import frame_pixels, geometry
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess
from embedding.media.video import SNIFF_BYTES, VideoSettings, sample_frames, sniff_video
from embedding.stages.encode import Encoder
from tests import images_factory as img
from tests import video_factory as vf

PREP = Preprocess(size=(64, 64))  # the demo model's input size
LIMITS = ImageLimits()
# Codecs with a 2 s GOP (8 frames at 4 fps), B-frames where the codec has them.
SEARCH_CODECS = ("h264-mp4", "vp9-webm", "mpeg4-avi")


@pytest.fixture(scope="module")
def videos() -> dict[str, bytes]:
    """The three-scene shapes video (9 s, 4 fps, 320x240) in every codec of the factory."""
    return {name: vf.shapes_video(name, fps=4, gop=8) for name in vf.CODECS}


@pytest.fixture(scope="module")
def bad() -> dict[str, bytes]:
    return vf.bad_videos()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder("demo", ModelConfig(), InferenceConfig(device="cpu", batch_size=32, torch_threads=1))


def sample(data: bytes, prep: Preprocess = PREP, **settings) -> video_module.VideoFrames:
    return sample_frames(io.BytesIO(data), prep, VideoSettings(**settings), LIMITS)


def times(frames: video_module.VideoFrames) -> list[float]:
    return [f.frame_time_s for f in frames.frames]


# Sniffing


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        ("h264-mp4", "mp4"),
        ("h264-mov", "mov"),
        ("vp9-webm", "webm"),
        ("mjpeg-mkv", "matroska"),
        ("mpeg4-avi", "avi"),
    ],
)
def test_sniff_names_each_container_from_its_first_bytes(
    videos: dict[str, bytes], codec: str, expected: str
) -> None:
    assert sniff_video(videos[codec][:SNIFF_BYTES]) == expected


def test_sniff_recognises_old_quicktime_and_audio_only_mp4(bad: dict[str, bytes]) -> None:
    assert sniff_video(b"\x00\x00\x10\x00moov" + bytes(56)) == "mov"
    assert sniff_video(b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat") == "mov"
    # An MP4 with audio only is a video container; decoding it reports the missing video stream.
    assert sniff_video(bad["audio-only.mp4"][:SNIFF_BYTES]) == "mp4"


def test_sniff_refuses_images_audio_and_random_bytes(bad: dict[str, bytes]) -> None:
    picture = img.shape_image(side=64)
    webp = io.BytesIO()
    picture.save(webp, "WEBP")
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(44)
    not_videos = {
        "jpeg": img.jpeg_bytes(picture),
        "png": img.png_bytes(picture),
        "gif": img.animated_gif([picture, picture]),
        "webp": webp.getvalue(),
        "wav": wav,
        "heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
        "avif": b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf",
        "random": bad["random.mp4"],
        "empty": b"",
        "short": b"\x00\x00",
        "text": b"hello, this is not a video at all, only some words",
    }
    for name, data in not_videos.items():
        assert sniff_video(data[:SNIFF_BYTES]) is None, name


def test_files_are_told_apart_by_their_bytes_not_their_names(tmp_path) -> None:
    paths = vf.write_videos(tmp_path)
    kinds = {name: sniff_video(path.read_bytes()[:SNIFF_BYTES]) for name, path in paths.items()}
    assert kinds["shapes-h264-mp4.mp4"] == "mp4" and kinds["shapes-vp9-webm.webm"] == "webm"
    assert kinds["shapes-mpeg4-avi.avi"] == "avi" and kinds["too-wide.mkv"] == "matroska"
    assert kinds["random.mp4"] is None and kinds["empty.mp4"] is None


# Sampling


@pytest.mark.parametrize("codec", list(vf.CODECS))
def test_interval_sampling_keeps_one_frame_a_second(videos: dict[str, bytes], codec: str) -> None:
    frames = sample(videos[codec])
    assert times(frames) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert [f.frame_index for f in frames.frames] == [0, 4, 8, 12, 16, 20, 24, 28, 32]  # 4 fps
    assert (frames.width, frames.height, frames.duration_s) == (320, 240, 9.0)
    assert frames.pixels.shape == (9, 64, 64, 3) and frames.pixels.dtype == np.uint8
    assert all((f.width, f.height) == (320, 240) for f in frames.frames)


def test_interval_setting_and_container_facts(videos: dict[str, bytes]) -> None:
    frames = sample(videos["h264-mp4"], frame_interval_s=0.5)
    assert times(frames) == [i / 2 for i in range(18)]
    assert (frames.container, frames.codec) == ("mp4", "h264")
    assert times(sample(videos["vp9-webm"], frame_interval_s=2.5)) == [0.0, 2.5, 5.0, 7.5]


@pytest.mark.parametrize("codec", SEARCH_CODECS)
def test_keyframe_sampling_keeps_the_keyframes(videos: dict[str, bytes], codec: str) -> None:
    frames = sample(videos[codec], sample="keyframes")
    assert times(frames) == [0.0, 2.0, 4.0, 6.0, 8.0]  # a keyframe every 8 frames
    assert [f.frame_index for f in frames.frames] == [0, 8, 16, 24, 32]


def test_keyframe_sampling_sends_only_the_kept_keyframes_to_the_decoder(
    videos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = []
    send = video_sampler.FrameSampler._send
    monkeypatch.setattr(video_sampler.FrameSampler, "_send", lambda self, p: (sent.append(p), send(self, p)))
    sample(videos["h264-mp4"], sample="keyframes")
    assert [p.is_keyframe for p in sent if p.size] == [True] * 5


def test_keyframe_sampling_without_a_plan_lets_ffmpeg_skip_the_rest(
    videos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_sampler, "MAX_GOP_PACKETS", 4)
    assert times(sample(videos["h264-mp4"], sample="keyframes")) == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_keyframe_sampling_of_an_all_keyframe_stream_keeps_one_a_second(videos: dict[str, bytes]) -> None:
    assert times(sample(videos["mjpeg-mkv"], sample="keyframes")) == [float(t) for t in range(9)]


def test_max_frames_spreads_the_samples_over_the_whole_video(videos: dict[str, bytes]) -> None:
    assert times(sample(videos["h264-mp4"], max_frames=3)) == [0.0, 3.0, 6.0]
    assert times(sample(videos["h264-mp4"], max_frames=4)) == [0.0, 2.25, 4.5, 6.75]


def test_max_frames_stops_early_when_the_headers_give_no_duration(
    videos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_module, "_declared_duration", lambda container, stream: None)
    frames = sample(videos["vp9-webm"], max_frames=4)
    assert times(frames) == [0.0, 1.0, 2.0, 3.0] and frames.duration_s is None


def test_only_kept_frames_are_converted(videos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    converted = []

    def spy(frame, plan, prep):
        converted.append(frame.pts)
        return frame_pixels(frame, plan, prep)

    monkeypatch.setattr(video_sampler, "frame_pixels", spy)
    assert len(sample(videos["h264-mp4"]).frames) == len(converted) == 9


@pytest.fixture(scope="module", params=SEARCH_CODECS)
def gop_video(request: pytest.FixtureRequest) -> bytes:
    """A keyframe every 1.5 s (9 frames at 6 fps), 54 frames; H.264 with B-frames, VP9, MPEG-4."""
    return vf.write_video(vf.scene_frames(6, 160, 120), fps=6, codec=request.param, gop=9)


def full_decode(data: bytes) -> dict[float, av.VideoFrame]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return {round(float(f.pts * stream.time_base), 6): f for f in container.decode(stream)}


def assert_exact(frames: video_module.VideoFrames, every: dict[float, av.VideoFrame]) -> None:
    plan = geometry(160, 120, 1.0, 0, PREP)
    for frame in frames.frames:
        reference = frame_pixels(every[frame.frame_time_s], plan, PREP)
        assert np.array_equal(frame.pixels, reference), frame.frame_time_s


@pytest.mark.parametrize("threads", [1, 3])
def test_planned_sampling_decodes_less_and_keeps_exactly_the_frames_of_a_full_decode(
    gop_video: bytes, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Frames that no sample needs are not decoded; the kept ones must not change by a single level,
    whatever the decoder's threads (frame threading delays frames, the plan does not depend on it)."""
    sent, skips = [], []
    send = video_sampler.FrameSampler._send

    def spy(self, packet):
        sent.append(packet)
        skips.append(str(self.ctx.skip_frame))
        send(self, packet)

    monkeypatch.setattr(video_sampler.FrameSampler, "_send", spy)
    ours = sample(gop_video, decode_threads=threads)
    assert times(ours) == [float(t) for t in range(9)]
    # After the last sample of each GOP nothing is sent (17 of 55 packets here); before it, frames
    # that are not kept go with NONREF (FFmpeg skips those that no other frame refers to).
    assert len(sent) < 45 and skips.count("NONREF") > 10
    assert_exact(ours, full_decode(gop_video))


def test_live_selection_takes_over_when_a_gop_outgrows_the_read_ahead(
    gop_video: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_sampler, "MAX_GOP_PACKETS", 4)
    ours = sample(gop_video)
    assert times(ours) == [float(t) for t in range(9)]
    assert_exact(ours, full_decode(gop_video))


def test_frame_pixels_match_the_still_image_of_the_same_picture(encoder: Encoder) -> None:
    pictures = [vf.render_scene(colour, shape, 640, 360, t=1.0) for colour, shape in vf.SCENES]
    data = vf.write_video(pictures, fps=1, codec="h264-mp4")
    frames = sample(data, prep=encoder.loaded.preprocess).pixels
    stills = np.stack([decode(img.png_bytes(p), encoder.loaded.preprocess, LIMITS).pixels for p in pictures])
    assert np.abs(frames.astype(int) - stills).mean() < 3.0
    cosines = (encoder.encode_pixels(frames) * encoder.encode_pixels(stills)).sum(axis=1)
    assert cosines.min() >= 0.995, cosines


def test_geometry_converts_straight_to_a_reduced_size() -> None:
    plan = geometry(1920, 1080, 1.0, 0, Preprocess(size=(224, 224)))
    assert plan.full == (1920, 1080) and plan.reduced == (797, 448)  # 2 x 224 on the short side
    assert plan.factor == pytest.approx(797 / 1920)
    assert geometry(1920, 1080, 1.0, 0, Preprocess(size=(224, 224), draft_gap=0)).reduced == (1920, 1080)
    assert geometry(320, 240, 1.0, 0, Preprocess(size=(224, 224))).reduced == (320, 240)


@pytest.mark.parametrize("rotation", [90, -90])
def test_rotated_video_is_turned_upright(rotation: int) -> None:
    portrait = vf.render_scene("blue", "star", 240, 320)
    # The display matrix turns the stored picture by `rotation` degrees counter-clockwise.
    stored = portrait.rotate(-rotation, expand=True)
    frames = sample(vf.write_video([stored, stored], fps=1, rotation=rotation))
    assert (frames.width, frames.height) == (240, 320)
    still = decode(img.png_bytes(portrait), PREP, LIMITS).pixels
    assert np.abs(frames.frames[0].pixels.astype(int) - still).mean() < 3.0


def test_non_square_pixels_are_stretched_to_the_displayed_width() -> None:
    wide = vf.render_scene("green", "triangle", 320, 240)
    squeezed = wide.resize((160, 240))
    frames = sample(vf.write_video([squeezed, squeezed], fps=1, codec="mpeg4-avi", sample_aspect=Fraction(2)))
    assert (frames.width, frames.height) == (320, 240)
    still = decode(img.png_bytes(wide), PREP, LIMITS).pixels
    assert np.abs(frames.frames[0].pixels.astype(int) - still).mean() < 4.0


# Bad videos


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("truncated.mp4", ErrorCode.INVALID_VIDEO_FORMAT),
        ("truncated-faststart.mp4", ErrorCode.INVALID_VIDEO_FORMAT),
        ("truncated.webm", ErrorCode.INVALID_VIDEO_FORMAT),
        ("empty.mp4", ErrorCode.INVALID_VIDEO_FORMAT),
        ("audio-only.mp4", ErrorCode.INVALID_VIDEO_FORMAT),
        ("too-long.mkv", ErrorCode.VIDEO_TOO_LONG),
        ("too-wide.mkv", ErrorCode.INVALID_IMAGE_DIMENSION),
        ("random.mp4", ErrorCode.INVALID_VIDEO_FORMAT),
    ],
)
def test_each_bad_video_fails_with_its_code(bad: dict[str, bytes], name: str, code: ErrorCode) -> None:
    with pytest.raises(EmbeddingError) as caught:
        sample_frames(io.BytesIO(bad[name]), PREP, VideoSettings(), LIMITS, name=name)
    assert caught.value.code == code
    assert name in caught.value.message


def test_too_wide_is_refused_from_the_headers_before_any_frame_is_decoded(
    bad: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_module, "FrameSampler", None)  # decoding would fail with a TypeError
    with pytest.raises(EmbeddingError) as caught:
        sample(bad["too-wide.mkv"])
    assert caught.value.code == ErrorCode.INVALID_IMAGE_DIMENSION


def test_too_small_frames_fail_like_small_images() -> None:
    tiny = vf.write_video([np.zeros((8, 8, 3), np.uint8)], codec="mjpeg-mkv")
    with pytest.raises(EmbeddingError) as caught:
        sample(tiny)
    assert caught.value.code == ErrorCode.INVALID_IMAGE_DIMENSION


def test_duration_limit_uses_the_timestamps_when_the_headers_are_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(video_module, "_declared_duration", lambda container, stream: None)
    with pytest.raises(EmbeddingError) as caught:
        sample(vf.long_video(seconds=100), max_seconds=60)
    assert caught.value.code == ErrorCode.VIDEO_TOO_LONG


def test_byte_limit_is_checked_before_reading(videos: dict[str, bytes]) -> None:
    with pytest.raises(EmbeddingError) as caught:
        sample(videos["h264-mp4"], max_bytes=1000)
    assert caught.value.code == ErrorCode.INVALID_IMAGE_SIZE


class FailingSource(io.BytesIO):
    """A file whose reads fail after `after` bytes, as a dropped connection would."""

    def __init__(self, data: bytes, after: int, error: Exception):
        super().__init__(data)
        self.after, self.error = after, error

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.after:
            raise self.error
        return super().read(size)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionResetError("reset by peer"), ErrorCode.FETCH_FAILED),
        (TimeoutError("read timed out"), ErrorCode.TIMEOUT),
        (FileNotFoundError("gone"), ErrorCode.NOT_FOUND),
    ],
)
def test_a_failing_source_gives_its_fetch_code(videos: dict[str, bytes], error: Exception, code: str) -> None:
    data = videos["h264-mp4"]
    source = FailingSource(data, after=len(data) // 3, error=error)
    with pytest.raises(EmbeddingError) as caught:
        sample_frames(source, PREP, VideoSettings(), LIMITS)
    assert caught.value.code == code


def test_a_source_failing_in_the_middle_of_the_frames_is_a_fetch_error() -> None:
    """The index is at the front: opening succeeds, and the read fails among the frames' data."""
    data = vf.write_video(vf.scene_frames(4), fps=4, faststart=True)
    source = FailingSource(data, after=len(data) // 2, error=ConnectionResetError("reset by peer"))
    with pytest.raises(EmbeddingError) as caught:
        sample_frames(source, PREP, VideoSettings(), LIMITS)
    assert caught.value.code == ErrorCode.FETCH_FAILED


@pytest.mark.parametrize("error", [ValueError("planted"), MemoryError(), RuntimeError("planted")])
def test_planted_failures_inside_decoding_become_invalid_video_format(
    videos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(video_sampler, "resize_crop", fail)
    with pytest.raises(EmbeddingError) as caught:
        sample(videos["vp9-webm"])
    assert caught.value.code == ErrorCode.INVALID_VIDEO_FORMAT


def test_a_planted_failure_of_the_demuxer_becomes_invalid_video_format(
    videos: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args, **kwargs):
        raise av.error.InvalidDataError(1094995529, "planted")

    monkeypatch.setattr(video_module.av, "open", fail)
    with pytest.raises(EmbeddingError) as caught:
        sample(videos["h264-mp4"])
    assert caught.value.code == ErrorCode.INVALID_VIDEO_FORMAT


# Settings


def test_video_config_section_and_limits() -> None:
    cfg = Config()
    assert (cfg.video.sample, cfg.video.frame_interval_s, cfg.video.max_frames) == ("interval", 1.0, 600)
    assert cfg.limits.max_video_bytes == 2 * 1024**3
    settings = VideoSettings.from_config(
        load_config(overrides=["video.sample=keyframes", "limits.max_video_seconds=90", "video.max_frames=5"])
    )
    assert settings == VideoSettings(sample="keyframes", max_frames=5, max_seconds=90.0)
    with pytest.raises(ConfigError, match=r"unknown key 'video\.fps'"):
        load_config(overrides=["video.fps=3"])
    with pytest.raises(ConfigError, match=r"video\.sample"):
        load_config(overrides=["video.sample=every"])


# Search with the real demo model


def frame_hits(
    encoder: Encoder, query: np.ndarray, videos: dict[str, bytes], codecs: tuple[str, ...]
) -> list[FrameHit]:
    hits = []
    for codec in codecs:
        frames = sample(videos[codec], prep=encoder.loaded.preprocess)
        cosines = encoder.encode_pixels(frames.pixels) @ query
        for frame, cosine in zip(frames.frames, cosines, strict=True):
            c = float(cosine)
            hits.append(
                FrameHit(codec, c, 0.0, relevance(c, 0.0, 0.2), frame.frame_time_s, frame.frame_index)
            )
    return hits


def still_hits(encoder: Encoder, query: np.ndarray) -> list[FrameHit]:
    """Still images of other shapes, ranked beside the frames."""
    hits = []
    for i, (colour, shape) in enumerate([("yellow", "square"), ("purple", "heart"), ("red", "cross")]):
        data = img.png_bytes(img.shape_image(colour, shape, seed=i, side=200))
        c = float(
            encoder.encode_pixels(decode(data, encoder.loaded.preprocess, LIMITS).pixels[None])[0] @ query
        )
        hits.append(FrameHit(f"{colour}-{shape}.png", c, 0.0, relevance(c, 0.0, 0.2)))
    return hits


def assert_segments_first(results: list[FrameHit | Segment], start: float, end: float, count: int) -> None:
    for result in results[:count]:
        assert isinstance(result, Segment), result
        assert start <= result.start_s <= result.best_time_s <= result.end_s < end, result


@pytest.mark.parametrize("lang", ["en", "fr", "de"])
def test_text_query_finds_the_scene_in_every_codec(
    videos: dict[str, bytes], encoder: Encoder, lang: str
) -> None:
    text = captions.query("blue", "star", lang)  # "a blue star", "une étoile bleue", "ein blauer Stern"
    query = encoder.encode_texts([text])[0]
    hits = frame_hits(encoder, query, videos, SEARCH_CODECS) + still_hits(encoder, query)
    results = group_segments(hits, margin=0.05, max_gap_s=1.5)
    # Each video first, as one segment of the blue star's seconds (3-6 s).
    assert {r.video_id for r in results[:3]} == set(SEARCH_CODECS)
    assert_segments_first(results, 3.0, 6.0, count=3)


def test_image_query_finds_the_green_triangle_scene(videos: dict[str, bytes], encoder: Encoder) -> None:
    still = img.png_bytes(img.shape_image("green", "triangle", seed=5, side=200))
    query = encoder.encode_pixels(decode(still, encoder.loaded.preprocess, LIMITS).pixels[None])[0]
    results = group_segments(frame_hits(encoder, query, videos, SEARCH_CODECS) + still_hits(encoder, query))
    assert_segments_first(results, 6.0, 9.0, count=3)


def test_red_circle_scene_opens_the_video(videos: dict[str, bytes], encoder: Encoder) -> None:
    query = encoder.encode_texts([captions.query("red", "circle")])[0]
    results = group_segments(frame_hits(encoder, query, videos, ("h264-mp4",)))
    assert_segments_first(results, 0.0, 3.0, count=1)
    assert results[0].start_s == 0.0
