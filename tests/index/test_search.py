"""Search on the sample data with the demo model: text and image queries, relevance, input validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from embedding.api import search, vectorize_image, vectorize_text
from embedding.config_file import load_config
from embedding.errors import EmbeddingError, ErrorCode
from embedding.job.run import run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def indexed(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local):
    """The sample embedded and indexed once for this module: (config path, config, truth by image id)."""
    folder = tmp_path_factory.mktemp("search")
    config = folder / "c.yaml"
    config.write_text(
        json.dumps(
            {
                "input": {"manifest": str(sample_dir / "manifest.parquet"), "unit_rows": 64},
                "output": {"root": str(folder / "out")},
                "inference": {"device": "cpu"},
                "index": {"enabled": True, "shards": 3},
            }
        )
    )
    cfg = load_config(config)
    summary = run(cfg)
    assert summary["index"]["rows"] == 384
    truth = pq.read_table(sample_dir / "manifest.parquet").to_pandas().set_index("image_id")
    return config, cfg, truth


def precision(hits, truth, colour: str, shape: str) -> float:
    return sum(
        (truth.loc[h.image_id, "colour"], truth.loc[h.image_id, "shape"]) == (colour, shape) for h in hits
    ) / len(hits)


def test_a_red_circle_finds_red_circles(indexed) -> None:
    _, cfg, truth = indexed
    hits = search("a red circle", cfg, top=10)
    assert len(hits) == 10 and precision(hits, truth, "red", "circle") >= 0.8
    assert all(0 <= h.relevance <= 1 and 0 <= h.metadata_score <= 1 for h in hits)


def test_other_languages(indexed) -> None:
    _, cfg, truth = indexed
    for query in ("un cercle rouge", "un círculo rojo", "ein roter Kreis"):
        assert precision(search(query, cfg, top=8), truth, "red", "circle") >= 0.6, query


def test_an_image_of_a_blue_star_finds_blue_stars_first(indexed, sample_dir: Path) -> None:
    _, cfg, truth = indexed
    star = truth[(truth["colour"] == "blue") & (truth["shape"] == "star")].iloc[0]
    hits = search(str(sample_dir / star["uri"]), cfg, top=8, image=True)
    assert hits[0].image_id == star.name and hits[0].cosine > 0.99
    assert all(h.metadata_score == 0 for h in hits)
    assert precision(hits[:5], truth, "blue", "star") == 1.0


def test_relevance_weight_zero_is_the_cosine_order(indexed) -> None:
    _, cfg, _ = indexed
    pure = load_config(None, [f"output.root={cfg.output.root}", "search.relevance_weight=0"])
    hits = search("a green heart on a gray background", pure, top=20)
    assert [h.cosine for h in hits] == sorted((h.cosine for h in hits), reverse=True)
    assert all(h.relevance == pytest.approx((h.cosine + 1) / 2) for h in hits)
    weighted = load_config(None, [f"output.root={cfg.output.root}", "search.relevance_weight=0.5"])
    reordered = search("a green heart on a gray background", weighted, top=20)
    assert [h.relevance for h in reordered] == sorted((h.relevance for h in reordered), reverse=True)
    # metadata now lifts rows whose caption names the gray background above some closer vectors
    assert [h.image_id for h in reordered] != [h.image_id for h in hits]


def test_filters_and_limits(indexed) -> None:
    _, cfg, truth = indexed
    hits = search("a shape", cfg, top=5, filters={"tags": "triangle"})
    assert len(hits) == 5 and all(truth.loc[h.image_id, "shape"] == "triangle" for h in hits)
    for text in ("", " ".join(["word"] * 71)):
        with pytest.raises(EmbeddingError) as info:
            search(text, cfg)
        assert info.value.code == ErrorCode.INVALID_TEXT
    assert vectorize_text(" ".join(["red"] * 70), cfg).values.shape == (1024,)


def test_single_item_api_raises_typed_errors(indexed, tmp_path: Path) -> None:
    _, cfg, _ = indexed
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(EmbeddingError) as info:
        vectorize_image(bad, cfg)
    assert info.value.code == ErrorCode.INVALID_IMAGE_FORMAT
    with pytest.raises(EmbeddingError) as info:
        vectorize_image(tmp_path / "missing.jpg", cfg)
    assert info.value.code == ErrorCode.NOT_FOUND


def test_cli_search_json(indexed) -> None:
    config, _, truth = indexed
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedding.cli",
            "search",
            str(config),
            "a yellow square",
            "--top",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 3 and set(rows[0]) >= {"image_id", "uri", "cosine", "metadata_score", "relevance"}
    assert truth.loc[rows[0]["image_id"], "shape"] == "square"
