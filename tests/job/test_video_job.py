"""Video rows through the whole job: frames embedded beside images, searched as moments, bad videos as one
error row each, and a driver killed in a video's unit ending as an uninterrupted run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding import api
from embedding.demo.captions import query
from embedding.job.run import run
from tests import video_factory as v
from tests.support.runs import kill_group, start_run, wait_for_free_lease, write_config

pytestmark = pytest.mark.integration

GOOD = ["shapes-h264-mp4.mp4", "shapes-vp9-webm.webm", "shapes-mpeg4-avi.avi"]
BAD = {
    "truncated.mp4": "InvalidVideoFormat",
    "truncated-faststart.mp4": "InvalidVideoFormat",
    "truncated.webm": "InvalidVideoFormat",
    "empty.mp4": "InvalidImageFormat",  # zero bytes are nothing: not a video, not an image
    "audio-only.mp4": "InvalidVideoFormat",
    "too-long.mkv": "VideoTooLong",
    "too-wide.mkv": "InvalidImageDimension",
    "random.mp4": "InvalidImageFormat",  # detected from the bytes, not the name
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return v.write_videos(tmp_path_factory.mktemp("videos"))


def manifest(folder: Path, sample_dir: Path, videos: dict[str, Path], images: int = 24) -> Path:
    sample = pq.read_table(sample_dir / "manifest.parquet").slice(0, images)
    ids = sample.column("image_id").to_pylist() + list(videos)  # a video's id: its file name
    uris = [str(sample_dir / u) for u in sample.column("uri").to_pylist()] + [str(p) for p in videos.values()]
    path = folder / "mixed.parquet"
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), path)
    return path


def test_frames_are_searchable_moments_and_bad_videos_are_one_error_each(
    tmp_path: Path, sample_dir: Path, videos: dict[str, Path], make_config
) -> None:
    cfg = make_config(str(manifest(tmp_path, sample_dir, videos)), index={"enabled": True})
    summary = run(cfg)
    root = Path(cfg.output.root)
    frames = pq.read_table(root / "video_frames" / "model_version=demo")
    errors = pq.read_table(root / "errors" / "model_version=demo").to_pylist()
    embedded = pq.read_table(root / "embeddings" / "model_version=demo").column("image_id").to_pylist()
    assert sorted(set(frames.column("video_id").to_pylist())) == sorted(GOOD)
    assert {r["image_id"]: r["error_code"] for r in errors} == BAD
    assert len(embedded) == 24 and summary["rows"]["videos"] == 3 and summary["rows"]["embedded"] == 24
    assert summary["rows"]["frames"] == frames.num_rows and summary["stages"]["encode"]["frames_per_s"] > 0
    times = frames.filter(pa.compute.equal(frames.column("video_id"), GOOD[0])).column("frame_time_s")
    assert np.allclose(sorted(times.to_pylist()), np.arange(9), atol=0.05)  # one frame a second of 9 s
    vectors = np.stack(frames.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    for lang in ("en", "fr", "de"):
        hits = api.search(query("blue", "star", lang), cfg, top=5)
        top = hits[0]
        assert top.segment is not None, (lang, [h.to_dict() for h in hits])
        assert 3 <= top.segment["start_s"] <= top.segment["frame_time_s"] <= top.segment["end_s"] <= 6, lang
    buffer = io.BytesIO()
    v.render_scene("green", "triangle").save(buffer, "PNG")
    hits = [h for h in api.search(buffer.getvalue(), cfg, top=10) if h.segment is not None]
    assert hits and all(h.segment["start_s"] >= 6 and h.segment["end_s"] <= 9 for h in hits[:3])
    ungrouped = cfg.model_copy(update={"search": cfg.search.model_copy(update={"group_videos": False})})
    frames_alone = api.search(query("blue", "star"), ungrouped, top=5)
    assert all(h.segment is None for h in frames_alone)
    assert any(h.metadata.get("frame_time_s") is not None for h in frames_alone)


def test_a_driver_killed_in_a_videos_unit_reruns_to_the_same_outputs(
    tmp_path: Path, sample_dir: Path, videos: dict[str, Path], make_config, ray_address: str
) -> None:
    good = {n: videos[n] for n in GOOD[:2]}
    path = manifest(tmp_path, sample_dir, good, images=6)
    reference = make_config(str(path), input={"unit_rows": 4})
    run(reference)
    root = tmp_path / "killed"
    config = write_config(
        tmp_path / "run.yaml", str(path), str(root), input={"unit_rows": 4}, ray={"address": ray_address}
    )
    process = start_run(config, tmp_path / "killed.log", "commit.after_move:3")  # the unit with the videos
    try:
        assert process.wait(timeout=600) == -9, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        kill_group(process)
    wait_for_free_lease(root)
    rerun = make_config(str(path), input={"unit_rows": 4}, output={"root": str(root)})
    summary = run(rerun)
    assert summary["rows"]["skipped_done"] > 0
    for table, key in (("video_frames", ["video_id", "frame_index"]), ("embeddings", ["image_id"])):
        ours = pq.read_table(root / table / "model_version=demo").sort_by([(k, "ascending") for k in key])
        theirs = pq.read_table(Path(reference.output.root) / table / "model_version=demo").sort_by(
            [(k, "ascending") for k in key]
        )
        assert ours.select(key).equals(theirs.select(key)), table
        a = np.stack(ours.column("embedding").to_numpy(zero_copy_only=False))
        b = np.stack(theirs.column("embedding").to_numpy(zero_copy_only=False))
        assert float((a * b).sum(axis=1).min()) >= 0.9999
