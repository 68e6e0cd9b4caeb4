"""Video results of the service, without starting Serve: segments in the wire format, a frame's thumbnail,
and "more like this" from a frame (the searcher's parts, called as the ingress calls them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedding import api
from embedding.demo.captions import query
from embedding.index.search import Index
from embedding.job.run import run
from embedding.service.live_index import find_row
from embedding.service.thumbnails import Thumbnails
from embedding.service.wire import camel_hit
from tests import video_factory as v

pytestmark = pytest.mark.integration


def test_a_video_moment_in_the_wire_format_its_thumbnail_and_more_like_it(
    tmp_path: Path, sample_dir: Path, make_config
) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(v.shapes_video("h264-mp4"))
    sample = pq.read_table(sample_dir / "manifest.parquet").slice(0, 8)
    ids = [*sample.column("image_id").to_pylist(), "clip"]
    uris = [str(sample_dir / u) for u in sample.column("uri").to_pylist()] + [str(video)]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), manifest)
    cfg = make_config(str(manifest), index={"enabled": True})
    run(cfg)

    hit = api.search(query("blue", "star"), cfg, top=3)[0]
    wire = camel_hit(hit.to_dict())
    assert wire["imageId"] == "clip" and set(wire["video"]) >= {"startS", "endS", "frameTimeS", "frameIndex"}
    assert 3 <= wire["video"]["startS"] <= wire["video"]["frameTimeS"] <= wire["video"]["endS"] <= 6

    index = Index.for_version(cfg.output.root, "demo")
    where = find_row(index, "clip", wire["video"]["frameIndex"])
    record = index.metadata(where)
    assert record["frame_time_s"] == wire["video"]["frameTimeS"]
    data, problem = Thumbnails(cfg).get("demo", record)
    assert problem is None
    thumb = Image.open(__import__("io").BytesIO(data))
    assert thumb.format == "JPEG" and max(thumb.size) <= cfg.service.thumbnail_px
    r, g, b = np.moveaxis(np.asarray(thumb.convert("RGB"), np.int32), -1, 0)
    blue, red = int(((b - r > 60) & (b - g > 60)).sum()), int(((r - b > 60) & (r - g > 60)).sum())
    assert blue > 10 * max(red, 1), (blue, red)  # the picture of the blue star's moment, not the red circle's

    # "More like this" from that frame: its stored vector finds the same moment first.
    like = api.rank(index, api.Vector(index.stored(where), "demo"), cfg, top=3)
    assert like[0].image_id == "clip" and like[0].segment is not None
    assert like[0].segment["start_s"] <= wire["video"]["frameTimeS"] <= like[0].segment["end_s"]
