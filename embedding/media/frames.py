"""Which packets of a video stream to decode, which frames to keep, and how a kept frame becomes pixels.

Interval sampling must decode the reference frames that lead to each sample, and nothing else:

- packets are read one group of pictures (GOP) ahead, and the frames to keep are chosen from their
  timestamps before any is decoded; packets after the last kept frame of a GOP are never sent to the
  decoder, nor a GOP without a kept frame (most of the saving when keyframes lie about an interval apart);
- a frame that is not kept and that no other frame refers to is skipped by FFmpeg (`skip_frame`);
- only kept frames are converted to RGB, straight to a reduced size (see `frame_pixels`).

Keyframe sampling sends the decoder the keyframes it keeps and nothing else (FFmpeg's `skip_frame =
NONKEY` when the stream cannot be planned).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from embedding.errors import EmbeddingError
from embedding.media.resize import Preprocess, resize_crop, resize_plan

EPS = 1e-3  # seconds: timestamps are rounded to their time base; a sample time is met within this
# Read-ahead of at most this much of one GOP; a longer GOP is decoded without skipping its tail.
MAX_GOP_PACKETS = 2048
MAX_GOP_BYTES = 64 * 1024 * 1024
_TRANSPOSE = {1: Image.Transpose.ROTATE_270, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Geometry:
    """How frames of one size become model pixels: the reduced RGB size FFmpeg converts to, then the crop."""

    full: tuple[int, int]  # displayed (width, height): pixel aspect and rotation applied
    reduced: tuple[int, int]  # (width, height) of the RGB conversion, in the stored orientation
    factor: float  # reduced / full, as resize_crop takes it
    transpose: Image.Transpose | None


def geometry(width: int, height: int, sar: float, rotation: float, prep: Preprocess) -> Geometry:
    """The plan for stored frames of `width` x `height` with a pixel aspect ratio and a display rotation.

    The reduction keeps `prep.draft_gap` x the model's resolution, as reduced-scale JPEG decoding does,
    so the final resample (resize_crop) sees the same kind of input as for a still image.
    """
    stored = (max(1, round(width * sar)), height)  # non-square pixels: stretch to the displayed width
    # FFmpeg's rotation is counter-clockwise; a player turns the picture back by the opposite angle.
    turn = round(-rotation / 90) % 4
    full = stored if turn % 2 == 0 else (stored[1], stored[0])
    factor = 1.0
    if prep.draft_gap > 0:
        (new_w, new_h), _ = resize_plan(*full, prep)
        scale = prep.draft_gap * max(new_w / full[0], new_h / full[1])
        if scale < 1:
            # Exact on the width; the height rounds to within half a reduced pixel.
            factor = math.ceil(stored[0] * scale) / stored[0]
    reduced = (max(1, round(stored[0] * factor)), max(1, round(stored[1] * factor)))
    return Geometry(full, reduced, factor, _TRANSPOSE.get(turn))


def frame_pixels(frame: av.VideoFrame, plan: Geometry, prep: Preprocess) -> np.ndarray:
    """Convert one kept frame straight to its reduced RGB size, then resample it as an image is."""
    width, height = plan.reduced
    if (width, height) == (frame.width, frame.height):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        # AREA averages the source pixels under each output pixel: no aliasing on large reductions.
        rgb = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="AREA")
    image = Image.fromarray(rgb, "RGB")
    if plan.transpose is not None:
        image = image.transpose(plan.transpose)
    return resize_crop(image, prep, plan.full, plan.factor)


@dataclass
class Sample:
    pts: int  # in the stream's time base
    time_s: float  # from the start of the stream
    pixels: np.ndarray
    width: int  # displayed
    height: int


class FrameSampler:
    """Feeds one video stream's packets to its decoder and keeps the frames due, up to `max_frames`.

    Sampling is planned from the packets, one GOP at a time, before any of them is decoded: the
    timestamps say which frame is the first at or after each sample time (keyframe sampling: which
    keyframe), so the frames to keep and the packets they need are known whatever the decoder's delay
    (frame threading holds frames back). A GOP longer than the read-ahead allows and packets without
    timestamps make the sampler choose frames as the decoder shows them instead ("live" selection).

    `check_size(width, height)` raises for frames outside the pixel limits; `too_long(seconds)` makes
    the error for timestamps beyond `max_seconds` (for streams whose headers give no duration).
    """

    def __init__(
        self,
        stream: av.VideoStream,
        prep: Preprocess,
        step: float,
        keyframes: bool,
        max_frames: int,
        max_seconds: float,
        check_size: Callable[[int, int], None],
        too_long: Callable[[float], EmbeddingError],
    ):
        self.stream, self.ctx, self.prep = stream, stream.codec_context, prep
        self.step, self.keyframes, self.max_frames = step, keyframes, max_frames
        self.max_seconds, self.check_size, self.too_long = max_seconds, check_size, too_long
        self.sar = float(stream.sample_aspect_ratio or 1) or 1.0
        self.start = stream.start_time
        self.target = 0.0  # the next sample time
        self.live = False  # choose frames as the decoder shows them, not from a plan
        self.keep: set[int] = set()  # planned pts not yet shown by the decoder
        self.chosen = 0  # frames planned or kept so far
        self.extent = 0.0  # how far the demuxed packets reach, in seconds
        self.packet_pts: list[int] = []  # every packet's, for display-order frame indices
        self.samples: list[Sample] = []
        self.stopped = False  # max_frames reached before the end of the stream
        self._plans: dict[tuple[int, int, float], Geometry] = {}

    @property
    def _time_base(self) -> Fraction:
        time_base = self.stream.time_base
        assert time_base is not None  # FFmpeg gives every demuxed stream one
        return time_base

    def _time(self, pts: int) -> float:
        if self.start is None:
            self.start = pts
        return float((pts - self.start) * self._time_base)

    def _next_target(self, at: float) -> float:
        return (math.floor((at + EPS) / self.step) + 1) * self.step

    def run(self, packets: Iterable[av.Packet]) -> list[Sample]:
        gop: list[av.Packet] = []
        gop_bytes = 0
        for packet in packets:
            self._note(packet)
            if self.live:
                self._send(packet)
            elif packet.is_keyframe and packet.pts is not None and gop:
                self._decode_planned(gop)
                gop, gop_bytes = [packet], packet.size
            else:
                gop.append(packet)
                gop_bytes += packet.size
                no_time = packet.pts is None and packet.size > 0  # a flush packet has neither
                if no_time or len(gop) > MAX_GOP_PACKETS or gop_bytes > MAX_GOP_BYTES:
                    self._go_live()
                    for held in gop:
                        self._send(held)
                    gop = []
            if self.stopped:
                return self.samples
        if gop:
            self._decode_planned(gop)
        return self.samples

    def _note(self, packet: av.Packet) -> None:
        if packet.pts is None:  # the flush packet at the end, or a container without timestamps
            return
        self.packet_pts.append(packet.pts)
        at = self._time(packet.pts)
        self.extent = max(self.extent, at + float((packet.duration or 0) * self._time_base))
        if at > self.max_seconds:  # the headers did not say; the timestamps do
            raise self.too_long(at)

    def _go_live(self) -> None:
        self.live = True
        if self.keyframes:
            self.ctx.skip_frame = "NONKEY"  # FFmpeg decodes the keyframes only

    def _decode_planned(self, gop: list[av.Packet]) -> None:
        """Plan the frames of one GOP (its keyframe first, in decode order), then decode what they need.

        References come before the frames that use them in decode order, so every packet after the last
        kept one stays unsent; before it, a frame that is not kept is skipped when nothing refers to it.
        """
        kept: set[int] = set()
        candidates = gop
        if self.keyframes:  # the GOP's keyframe is its only candidate, and the only packet decoded
            candidates = gop[:1] if gop[0].is_keyframe else []
        shown = sorted((self._time(p.pts), i) for i, p in enumerate(candidates) if p.pts is not None)
        for at, i in shown:
            if self.chosen >= self.max_frames:
                break
            if at >= self.target - EPS:
                pts = gop[i].pts
                assert pts is not None  # candidates (gop, or its first packet) all have one
                kept.add(i)
                self.keep.add(pts)
                self.chosen += 1
                self.target = self._next_target(at)
        last = max(kept, default=-1)
        for i, packet in enumerate(gop):
            if packet.pts is None:  # the flush packet: the decoder gives back the frames it holds
                self._send(packet)
            elif i <= last:
                self.ctx.skip_frame = "DEFAULT" if i in kept else "NONREF"
                self._send(packet)
        if self.chosen >= self.max_frames:
            self._stop()

    def _send(self, packet: av.Packet | None) -> None:
        if self.live and not self.keyframes and packet is not None and packet.pts is not None:
            # A non-reference frame shown before the next sample time is never kept, nor needed by any
            # other frame: FFmpeg may skip decoding it.
            self.ctx.skip_frame = "NONREF" if self._time(packet.pts) < self.target - EPS else "DEFAULT"
        for frame in self.ctx.decode(packet):
            self._offer(frame)
        if self.live and self.chosen >= self.max_frames and not self.stopped:
            self._stop()

    def _stop(self) -> None:
        """Enough frames: drain the decoder of the planned ones it still holds, and read no further."""
        self.stopped = True
        if self.keep:
            for frame in self.ctx.decode(None):
                self._offer(frame)

    def _offer(self, frame: av.VideoFrame) -> None:
        if frame.pts is None:
            return
        at = self._time(frame.pts)
        if frame.pts in self.keep:
            self.keep.discard(frame.pts)
        elif (
            self.live
            and self.chosen < self.max_frames
            and at >= self.target - EPS
            and (frame.key_frame or not self.keyframes)
        ):
            self.chosen += 1
            self.target = self._next_target(at)
        else:
            return
        key = (frame.width, frame.height, frame.rotation)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = geometry(frame.width, frame.height, self.sar, frame.rotation, self.prep)
            self.check_size(*plan.full)
        self.samples.append(Sample(frame.pts, at, frame_pixels(frame, plan, self.prep), *plan.full))
