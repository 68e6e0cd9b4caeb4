"""Grouping video frames among search candidates into segments, with images passing through."""

from __future__ import annotations

import pytest

from embedding.config import VideoConfig
from embedding.index.relevance import relevance
from embedding.index.segments import FrameHit, Segment, group_segments, segment_gap_s


def frame(video: str, t: float, cosine: float, meta: float = 0.0, **fields) -> FrameHit:
    return FrameHit(video, cosine, meta, relevance(cosine, meta, 0.2), t, round(t * 25), fields)


def image(image_id: str, cosine: float, meta: float = 0.0) -> FrameHit:
    return FrameHit(image_id, cosine, meta, relevance(cosine, meta, 0.2), fields={"uri": f"{image_id}.jpg"})


def test_consecutive_matching_frames_form_one_segment_with_the_best_frames_scores() -> None:
    hits = [frame("v", 3.0, 0.80), frame("v", 4.0, 0.83, uri="v.mp4"), frame("v", 5.0, 0.81)]
    [segment] = group_segments(hits, margin=0.05, max_gap_s=1.5)
    assert isinstance(segment, Segment)
    assert (segment.video_id, segment.start_s, segment.end_s, segment.frames) == ("v", 3.0, 5.0, 3)
    assert (segment.best_time_s, segment.best_frame_index, segment.cosine) == (4.0, 100, 0.83)
    assert segment.relevance == relevance(0.83, 0.0, 0.2) and segment.fields == {"uri": "v.mp4"}


def test_frames_outside_the_margin_of_the_videos_best_are_not_matching() -> None:
    hits = [frame("v", t, c) for t, c in [(0.0, 0.40), (1.0, 0.41), (3.0, 0.80), (4.0, 0.78), (5.0, 0.70)]]
    [segment] = group_segments(hits, margin=0.05, max_gap_s=1.5)
    assert (segment.start_s, segment.end_s, segment.frames) == (3.0, 4.0, 2)


def test_a_gap_or_a_missing_frame_splits_a_video_into_segments() -> None:
    # 5 s is not among the candidates (or did not match): 3-4 s and 6-7 s are two moments.
    hits = [frame("v", t, 0.8 + t / 100) for t in (3.0, 4.0, 6.0, 7.0)]
    first, second = group_segments(hits, margin=0.1, max_gap_s=1.5)
    assert (first.start_s, first.end_s) == (6.0, 7.0)  # ranked by its best frame (7 s, cosine 0.87)
    assert (second.start_s, second.end_s) == (3.0, 4.0)
    assert len(group_segments(hits, margin=0.1, max_gap_s=2.0)) == 1


def test_images_pass_through_and_everything_is_ranked_by_relevance() -> None:
    cat, dog = image("cat", 0.70, meta=1.0), image("dog", 0.20)
    hits = [cat, frame("a", 1.0, 0.75), frame("a", 2.0, 0.74), dog, frame("b", 8.0, 0.50)]
    results = group_segments(hits, margin=0.05, max_gap_s=1.5)
    assert results[0] is cat  # its metadata score lifts its relevance above the best frame's
    assert [getattr(r, "video_id", None) for r in results[1:3]] == ["a", "b"]
    assert results[3] is dog
    assert [r.relevance for r in results] == sorted((r.relevance for r in results), reverse=True)


def test_ties_are_ordered_the_same_way_every_time() -> None:
    hits = [frame("b", 1.0, 0.5), frame("a", 1.0, 0.5), image("c", 0.5), frame("a", 9.0, 0.5)]
    first = group_segments(hits)
    assert group_segments(list(reversed(hits))) == first
    assert [(getattr(r, "video_id", None), getattr(r, "start_s", None)) for r in first] == [
        ("a", 1.0),
        ("a", 9.0),
        ("b", 1.0),
        (None, None),
    ]


def test_segment_as_a_result_object() -> None:
    [segment] = group_segments([frame("v", 2.0, 0.6, uri="v.mp4", caption="a blue star")])
    assert segment.to_dict() == {
        "video_id": "v",
        "start_s": 2.0,
        "end_s": 2.0,
        "frame_time_s": 2.0,
        "frame_index": 50,
        "frames": 1,
        "cosine": 0.6,
        "metadata_score": 0.0,
        "relevance": pytest.approx(relevance(0.6, 0.0, 0.2), abs=1e-6),
        "uri": "v.mp4",
        "caption": "a blue star",
    }


def test_gap_follows_the_sampling_interval_unless_set() -> None:
    assert segment_gap_s(VideoConfig()) == 1.5
    assert segment_gap_s(VideoConfig(frame_interval_s=2.0)) == 3.0
    assert segment_gap_s(VideoConfig(frame_interval_s=2.0, segment_gap_s=10.0)) == 10.0
