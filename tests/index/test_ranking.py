"""Folding near-duplicates among ranked hits: images and video segments alike, scores untouched."""

from __future__ import annotations

import datetime as dt

import numpy as np

from embedding.index.ranking import Hit, _folded, plain


def _unit(*values: float) -> np.ndarray:
    vector = np.array(values, np.float32)
    return vector / np.linalg.norm(vector)


def _hit(image_id: str, cosine: float, segment: dict | None = None) -> Hit:
    return Hit(image_id, None, cosine, 0.0, cosine, {"image_id": image_id}, segment)


def test_copies_fold_into_the_better_hit_across_images_and_videos() -> None:
    hits = [
        _hit("photo", 0.9),
        _hit("clip-a", 0.8, {"frame_index": 3}),  # a video's segment: its best frame stands for it
        _hit("photo-copy", 0.7),
        _hit("clip-b", 0.6, {"frame_index": 7}),  # the same shot in another video
        _hit("other", 0.5),
    ]
    stored = {
        ("photo", None): _unit(1, 0, 0),
        ("clip-a", 3): _unit(0, 1, 0),
        ("photo-copy", None): _unit(1, 0.05, 0),
        ("clip-b", 7): _unit(0, 1, 0.1),
        ("other", None): _unit(0.6, 0.6, 0.5),
    }
    kept = _folded(hits, stored, cosine=0.95)
    assert [(h.image_id, h.similar) for h in kept] == [
        ("photo", ("photo-copy",)),
        ("clip-a", ("clip-b",)),
        ("other", ()),
    ]
    assert [h.cosine for h in kept] == [0.9, 0.8, 0.5]  # folding changes no score
    assert kept[0].to_dict()["similar"] == ["photo-copy"] and "similar" not in kept[2].to_dict()
    assert _folded(hits, stored, cosine=1.01) == hits  # nothing is that close


def test_carried_dates_are_iso_text_in_results() -> None:
    meta = {"image_id": "a", "day": dt.date(2024, 1, 2), "at": [dt.datetime(2024, 1, 2, 3)]}
    hit = Hit("a", None, 1.0, 0.0, 1.0, meta)
    assert hit.to_dict()["day"] == "2024-01-02" and hit.to_dict()["at"] == ["2024-01-02T03:00:00"]
    assert plain(5) == 5
