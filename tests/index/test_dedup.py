"""Near-duplicates folded in results: re-encoded and resized copies of sample images (made here) fold into
the better result, distinct images stay apart, and the scores of what is kept do not change."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from embedding.api import search
from embedding.config import Config
from embedding.config_file import load_config
from embedding.job.run import run

pytestmark = pytest.mark.integration
ORIGINALS = 48


def _copies(data: bytes) -> dict[str, bytes]:
    """A JPEG re-encoded at quality 60, and PNGs resized to 80% and 60% (cosine >= 0.99 with the demo model;
    distinct sample images stay under 0.8)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = {}
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    out["q60"] = buffer.getvalue()
    for share in (80, 60):
        buffer = io.BytesIO()
        image.resize((image.width * share // 100, image.height * share // 100)).save(buffer, "PNG")
        out[f"s{share}"] = buffer.getvalue()
    return out


@pytest.fixture(scope="module")
def planted(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local) -> tuple[Config, dict]:
    """48 sample images and three copies each of the first eight, embedded and indexed (flat, exact)."""
    folder = tmp_path_factory.mktemp("dedup")
    rows = pq.read_table(sample_dir / "manifest.parquet").to_pylist()[:ORIGINALS]
    copies_of: dict[str, list[str]] = {}
    manifest = []
    for number, row in enumerate(rows):
        data = (sample_dir / row["uri"]).read_bytes()
        manifest.append({"image_id": row["image_id"], "uri": str(sample_dir / row["uri"]), "image": None})
        if number < 8:
            for name, copy in _copies(data).items():
                copy_id = f"{row['image_id']}-{name}"
                copies_of.setdefault(row["image_id"], []).append(copy_id)
                manifest.append({"image_id": copy_id, "uri": None, "image": copy})
    schema = pa.schema([("image_id", pa.string()), ("uri", pa.string()), ("image", pa.binary())])
    pq.write_table(pa.Table.from_pylist(manifest, schema), folder / "manifest.parquet")
    cfg = load_config(
        None,
        [
            f"input.manifest=['{folder / 'manifest.parquet'}']",
            f"output.root={folder / 'out'}",
            "inference.device=cpu",
            "run.executor=standalone",
            "index.enabled=true",
            "index.kind=flat",
        ],
    )
    assert run(cfg)["index"]["rows"] == len(manifest)
    return cfg, copies_of


def test_copies_fold_into_the_better_result_and_distinct_images_stay(planted, sample_dir: Path) -> None:
    cfg, copies_of = planted
    for original, copies in copies_of.items():
        query = next((sample_dir / "images").glob(f"{original}.*"))
        plain = search(query, cfg, top=8, image=True, dedup=False)
        folded = search(query, cfg, top=8, image=True, dedup=True)
        family = {original, *copies}
        assert {h.image_id for h in plain[:4]} == family  # the copies crowd the top without dedup
        first = folded[0]
        assert first.image_id in family and {first.image_id, *first.similar} == family
        assert not family & {h.image_id for h in folded[1:]}
        # Eight results still, and distinct images are never folded (none is within 0.95 of another here):
        # what a result lists as similar are copies of its own image.
        assert len(folded) == 8
        for hit in folded:
            own = hit.image_id.split("-")[0] + "-" + hit.image_id.split("-")[1]
            assert set(hit.similar) <= {own, *copies_of.get(own, [])} - {hit.image_id}
        by_id = {h.image_id: h.cosine for h in plain}
        assert all(h.cosine == by_id.get(h.image_id, h.cosine) for h in folded)  # scores unchanged
