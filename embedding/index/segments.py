"""Video search results: the frames a search found, grouped into segments (moments) of each video.

The index holds one vector per sampled frame, so a search returns frames. Grouping turns them into what a
user asks for, the moments of a video that match:

- **Matching frames.** Among the candidates of one query (the search's pool), a frame of a video matches
  when its cosine lies within `margin` of the cosine of that video's best frame. Frames outside the pool
  are not matching; weaker frames of a video that has better ones are dropped, not listed.
- **Segments.** Matching frames of one video that follow each other, at most `max_gap_s` apart (about one
  sampling interval: 1.5 x `video.frame_interval_s` by default), form one segment from the first one's
  time to the last one's. A video can give several segments (a scene that comes back later).
- **Scores and ranking.** A segment carries the scores of its best frame (highest relevance, then cosine)
  and that frame's time. Images pass through unchanged, and the merged list is ranked by relevance (the
  best frame's, for a segment), as image results are, so relevance stays the one formula of relevance.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from embedding.config import VideoConfig


@dataclass(frozen=True)
class FrameHit:
    """One search candidate: an image, or one frame of a video (then `frame_time_s` is set)."""

    item_id: str  # the image_id, or the video's id (its manifest row's id) for a frame
    cosine: float
    metadata_score: float
    relevance: float
    frame_time_s: float | None = None
    frame_index: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)  # uri and carried metadata, passed through

    @property
    def is_frame(self) -> bool:
        return self.frame_time_s is not None


@dataclass(frozen=True)
class Segment:
    """Consecutive matching frames of one video, with the time and scores of the best of them."""

    video_id: str
    start_s: float
    end_s: float
    best_time_s: float
    best_frame_index: int | None
    cosine: float  # the best frame's scores
    metadata_score: float
    relevance: float
    frames: int  # matching frames in the segment
    fields: Mapping[str, Any] = field(default_factory=dict)  # the best frame's

    def to_dict(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "frame_time_s": round(self.best_time_s, 3),
            "frame_index": self.best_frame_index,
            "frames": self.frames,
            "cosine": round(self.cosine, 6),
            "metadata_score": round(self.metadata_score, 6),
            "relevance": round(self.relevance, 6),
            **{k: v for k, v in self.fields.items() if k not in ("video_id", "frame_time_s", "frame_index")},
        }


def segment_gap_s(video: VideoConfig) -> float:
    """The largest time between two frames of one segment: the config's, or 1.5 sampling intervals."""
    return video.segment_gap_s if video.segment_gap_s is not None else 1.5 * video.frame_interval_s


def _best(frames: list[FrameHit]) -> FrameHit:
    return max(frames, key=lambda f: (f.relevance, f.cosine, -(f.frame_time_s or 0.0)))


def _segment(video_id: str, frames: list[FrameHit]) -> Segment:
    best = _best(frames)
    return Segment(
        video_id=video_id,
        start_s=frames[0].frame_time_s or 0.0,
        end_s=frames[-1].frame_time_s or 0.0,
        best_time_s=best.frame_time_s or 0.0,
        best_frame_index=best.frame_index,
        cosine=best.cosine,
        metadata_score=best.metadata_score,
        relevance=best.relevance,
        frames=len(frames),
        fields=best.fields,
    )


def video_segments(video_id: str, frames: list[FrameHit], margin: float, max_gap_s: float) -> list[Segment]:
    """The segments of one video from its frames among the candidates (in any order)."""
    top = max(f.cosine for f in frames)
    matching = sorted((f for f in frames if f.cosine >= top - margin), key=lambda f: f.frame_time_s or 0.0)
    runs: list[list[FrameHit]] = [[matching[0]]]
    for frame in matching[1:]:
        if (frame.frame_time_s or 0.0) - (runs[-1][-1].frame_time_s or 0.0) <= max_gap_s:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return [_segment(video_id, run) for run in runs]


def group_segments(
    hits: Iterable[FrameHit], margin: float = 0.05, max_gap_s: float = 1.5
) -> list[FrameHit | Segment]:
    """Images unchanged and video frames as segments, ranked by relevance, then cosine (best first).

    Cut the result to the number of results wanted afterwards: the candidates should be a pool larger
    than that, so that the frames of one video cannot crowd out everything else before grouping.
    """
    results: list[FrameHit | Segment] = []
    videos: dict[str, list[FrameHit]] = defaultdict(list)
    for hit in hits:
        if hit.is_frame:
            videos[hit.item_id].append(hit)
        else:
            results.append(hit)
    for video_id, frames in videos.items():
        results.extend(video_segments(video_id, frames, margin, max_gap_s))

    def order(result: FrameHit | Segment) -> tuple[float, float, str, float]:
        if isinstance(result, Segment):
            return (-result.relevance, -result.cosine, result.video_id, result.start_s)
        return (-result.relevance, -result.cosine, result.item_id, -1.0)

    return sorted(results, key=order)
