"""Reruns: nothing redone when nothing changed, only new rows after an append, one partition per version."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.index.search import Index
from embedding.job.run import run

pytestmark = pytest.mark.integration


def manifest_slice(sample_dir: Path, folder: Path, name: str, start: int, stop: int) -> Path:
    table = pq.read_table(sample_dir / "manifest.parquet").slice(start, stop - start)
    uris = [str(sample_dir / u) for u in table.column("uri").to_pylist()]
    table = table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(uris))
    path = folder / name
    pq.write_table(table, path)
    return path


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_rerun_append_and_new_version(tmp_path: Path, sample_dir: Path, make_config) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest_slice(sample_dir, manifests, "part-a.parquet", 0, 60)
    extra_version = {
        "versions": {
            "demo-b": {
                "architecture": "embedding-demo",
                "weights": str(Path("embedding/demo/weights/demo.safetensors").resolve()),
                "languages": ["en"],
            }
        }
    }
    cfg = make_config(str(manifests), index={"enabled": True, "shards": 2}, model=extra_version)
    root = Path(cfg.output.root)
    first = run(cfg)
    assert first["rows"]["new"] == 60 and first["rows"]["embedded"] == 60

    again = run(cfg)  # unchanged inputs: nothing is re-embedded
    assert again["rows"]["new"] == 0 and again["rows"]["embedded"] == 0
    assert again["rows"]["skipped_done"] == 60 and again["units"]["skipped"] == again["units"]["total"]

    manifest_slice(sample_dir, manifests, "part-b.parquet", 60, 80)  # an appended manifest file
    appended = run(cfg)
    assert appended["rows"]["new"] == 20 and appended["rows"]["embedded"] == 20
    assert appended["rows"]["skipped_done"] == 60
    index = Index.for_version(cfg.output.root, "demo")
    indexed = {i for shard in index.shards for i in shard.meta.column("image_id").to_pylist()}
    expected = set(pq.read_table(sample_dir / "manifest.parquet").column("image_id").to_pylist()[:80])
    assert indexed == expected and index.manifest.rows == 80

    before = digests(root / "embeddings" / "model_version=demo") | digests(
        root / "errors" / "model_version=demo"
    )
    other = make_config(
        str(manifests), index={"enabled": True, "shards": 2}, model={**extra_version, "version": "demo-b"}
    )
    new_version = run(other)
    assert new_version["rows"]["embedded"] == 80 and new_version["model_version"] == "demo-b"
    assert (root / "embeddings" / "model_version=demo-b").is_dir()
    after = digests(root / "embeddings" / "model_version=demo") | digests(
        root / "errors" / "model_version=demo"
    )
    assert after == before  # the old partition is byte-identical


def test_changed_manifest_file_embeds_only_new_rows(tmp_path: Path, sample_dir: Path, make_config) -> None:
    path = manifest_slice(sample_dir, tmp_path, "m.parquet", 0, 40)
    cfg = make_config(str(path))
    run(cfg)
    manifest_slice(sample_dir, tmp_path, "m.parquet", 0, 50)  # the same file, grown: its units get new ids
    grown = run(cfg)
    # The file's units are new (its content changed); its 40 embedded rows are taken over, not recomputed.
    assert grown["rows"]["new"] == 10 and grown["rows"]["adopted"] == 40 and grown["rows"]["embedded"] == 10
    emb = pq.read_table(Path(cfg.output.root) / "embeddings").column("image_id").to_pylist()
    assert len(emb) == len(set(emb)) == 50


def test_overwrite_replaces_the_partition_after_commit(tmp_path: Path, sample_dir: Path, make_config) -> None:
    path = manifest_slice(sample_dir, tmp_path, "m.parquet", 0, 30)
    cfg = make_config(str(path))
    run(cfg)
    manifest_slice(sample_dir, tmp_path, "m.parquet", 30, 50)
    cfg = make_config(str(path), run={"mode": "overwrite"})
    summary = run(cfg)
    assert summary["rows"]["new"] == 20
    emb = pq.read_table(Path(cfg.output.root) / "embeddings").column("image_id").to_pylist()
    expected = pq.read_table(sample_dir / "manifest.parquet").column("image_id").to_pylist()[30:50]
    assert sorted(emb) == sorted(expected)
    assert not (Path(cfg.output.root) / "_state" / "overwrite").exists() or not any(
        (Path(cfg.output.root) / "_state" / "overwrite").iterdir()
    )
    shutil.rmtree(tmp_path / "out")
