"""Duplicate groups: planted exact copies (same content digest) and near copies (cosine ~0.99) are found
through every index kind, in this process and in Ray tasks, retired rows never; with the demo model too."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import embedding
from embedding import cli
from embedding.config import Config
from embedding.config_file import load_config
from embedding.demo.sample import write_sample
from embedding.errors import ConfigError
from embedding.index.build import build_index
from embedding.index.duplicate_groups import DuplicateGroup, duplicate_groups
from embedding.index.duplicates import Target, find_duplicates
from embedding.index.search import Shard
from embedding.store.partition import Partition
from embedding.store.schemas import OutputSchemas, embedding_type, file_metadata
from tests.index.conftest import clustered

DIM = 1024
FAST = {"self_check_queries": 0, "compact_at": 10}  # no self-check: these clusters are no images


def commit(
    root: Path, ids: list[str], vectors: np.ndarray, digests: list[str], units: int, first: int
) -> None:
    """Commit rows as embedding units (unit<first>, ...) with their own content digests, as the job would."""
    schemas = OutputSchemas("image", DIM, "float32", [], file_metadata({"model_version": "demo"}))
    part = Partition(str(root), "image", "demo")
    for u, chunk in enumerate(np.array_split(np.arange(len(ids)), units)):
        rows = {
            "image_id": [ids[i] for i in chunk],
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors[chunk].reshape(-1)), type=embedding_type(DIM)
            ),
            "model_version": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(chunk), np.int32)), pa.array(["demo"])
            ),
            "uri": [f"/images/{ids[i]}.jpg" for i in chunk],
            "width": pa.array([100] * len(chunk), pa.int32()),
            "height": pa.array([100] * len(chunk), pa.int32()),
            "content_sha256": [digests[i] for i in chunk],
        }
        unit = f"unit{first + u:05d}"
        marker = {"unit_id": unit, "rows_embedded": len(chunk), "rows_failed": 0, "errors_by_code": {}}
        part.commit(
            unit,
            pa.Table.from_pydict(rows, schema=schemas.embeddings()),
            schemas.errors().empty_table(),
            marker,
        )


def near_copy(vector: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The vector moved by noise of norm 0.12: cosine about 0.993 to it."""
    noise = rng.normal(size=DIM)
    moved = vector + 0.12 * noise / np.linalg.norm(noise)
    return (moved / np.linalg.norm(moved)).astype(np.float32)


def plant(root: Path, originals: int, seed: int, first: int = 0, units: int = 6) -> set[frozenset[str]]:
    """Commit `originals` distinct vectors and copies of some of them, shuffled over the units; returns
    the planted groups: 12 exact copies, 12 near copies, 4 originals with one copy of each kind."""
    rng = np.random.default_rng(seed)
    vectors = list(clustered(originals, DIM, seed=seed))
    ids = [f"img-{first + i:05d}" for i in range(originals)]
    digests = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    groups = []
    for j, source in enumerate(rng.choice(originals, 28, replace=False)):
        members = [ids[source]]
        if j < 12 or j >= 24:
            members.append(f"exact-{first + j:05d}")
            ids.append(members[-1]), vectors.append(vectors[source]), digests.append(digests[source])
        if j >= 12:
            members.append(f"near-{first + j:05d}")
            ids.append(members[-1]), vectors.append(near_copy(vectors[source], rng))
            digests.append(hashlib.sha256(members[-1].encode()).hexdigest())
        groups.append(frozenset(members))
    order = rng.permutation(len(ids))  # copies in other units, other shards
    commit(root, [ids[i] for i in order], np.stack(vectors)[order], [digests[i] for i in order], units, first)
    return set(groups)


def found_sets(groups: tuple[DuplicateGroup, ...]) -> set[frozenset[str]]:
    return {frozenset(m.image_id for m in g.members) for g in groups}


def pairs(groups: set[frozenset[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in itertools.combinations(sorted(g), 2)}


def precision_recall(found: set[frozenset[str]], planted: set[frozenset[str]]) -> tuple[float, float]:
    got, want = pairs(found), pairs(planted)
    return len(got & want) / max(1, len(got)), len(got & want) / max(1, len(want))


def check_groups(cfg: Config, groups: tuple[DuplicateGroup, ...], planted: set[frozenset[str]]) -> None:
    """Exactly the planted groups, their kinds, their order and members' order, and the file's the same."""
    assert found_sets(groups) == planted
    for group in groups:
        names = [m.image_id for m in group.members]
        assert names == sorted(names) and group.members[0].cosine == 1.0
        assert group.kind == ("exact" if all(n.startswith(("img-", "exact-")) for n in names) else "near")
        assert all(m.cosine >= 0.97 for m in group.members)
    firsts = [g.members[0].image_id for g in groups]
    assert firsts == sorted(firsts) and [g.group_id for g in groups] == list(range(1, len(groups) + 1))
    assert duplicate_groups(cfg) == list(groups)


@pytest.mark.parametrize(
    "settings",
    [{}, {"kind": "hnsw"}, {"factory": "'IVF32,PQ16x4'", "nprobe": 8}],
    ids=["flat", "hnsw", "ivfpq"],
)
def test_planted_copies_are_found_through_every_kind(local_index_config, settings: dict) -> None:
    cfg = local_index_config(shards=2, **FAST, **settings)
    planted = plant(Path(cfg.output.root), 600, seed=1)
    manifest = build_index(cfg)
    summary = find_duplicates(cfg)
    assert summary.executor == "local" and summary.build_id == manifest.build_id
    assert (summary.groups, summary.exact_groups, summary.near_groups) == (28, 12, 16)
    assert summary.rows == 600 + 32 and summary.members == 12 * 2 + 12 * 2 + 4 * 3
    check_groups(cfg, summary.found, planted)
    table = pq.read_table(summary.path)
    assert (
        table.schema.field("cosine").type == pa.float32()
        and table.schema.field("group_id").type == pa.int64()
    )
    assert set(table.column("build_id").to_pylist()) == {manifest.build_id}
    assert summary.to_dict()["groups"] == 28 and "found" not in summary.to_dict()


@pytest.mark.parametrize("settings", [{}, {"factory": "'IVF32,PQ16x4'", "nprobe": 8}], ids=["flat", "ivfpq"])
def test_retired_rows_never_appear_and_a_threshold_of_one_keeps_exact_copies(
    local_index_config, settings: dict
) -> None:
    cfg = local_index_config(shards=2, **FAST, **settings)
    root = Path(cfg.output.root)
    planted = plant(root, 600, seed=1)
    # Copies of live originals (the same digests, or cosine ~0.99) in a unit withdrawn after the build:
    # tombstones beside live rows in the built shards.
    rng, originals, grouped = np.random.default_rng(2), clustered(600, DIM, seed=1), set().union(*planted)
    lonely = [i for i in range(600) if f"img-{i:05d}" not in grouped][:10]
    gone = [f"gone-{i:05d}" for i in lonely] + [f"gone-near-{i:05d}" for i in lonely]
    copies = np.stack([originals[i] for i in lonely] + [near_copy(originals[i], rng) for i in lonely])
    digests = [hashlib.sha256(f"img-{i:05d}".encode()).hexdigest() for i in lonely] + ["1" * 64] * 10
    commit(root, gone, copies, digests, units=1, first=50_000)
    build_index(cfg)
    extra = plant(root, 100, seed=3, first=60_000, units=1)  # a delta shard: IVF shares its coarse step
    Partition(cfg.output.root, "image", "demo").retire(["unit50000"])
    assert build_index(cfg).change.action == "update"
    retired, planted = {i for i in gone}, planted | extra
    summary = find_duplicates(cfg)
    check_groups(cfg, summary.found, planted)
    assert not retired & {m.image_id for g in summary.found for m in g.members}
    exact = find_duplicates(cfg, cosine=1.0).found  # near copies fall away, exact ones stay
    without_near = {frozenset(i for i in g if not i.startswith("near-")) for g in planted}
    assert found_sets(exact) == {g for g in without_near if len(g) > 1}
    assert {g.kind for g in exact} == {"exact"}


def test_groups_do_not_depend_on_the_shards(tmp_path: Path) -> None:
    found = []
    for shards in (1, 3):
        root = tmp_path / str(shards)
        cfg = load_config(None, [f"output.root={root}", "model.version=demo", f"index.shards={shards}"])
        plant(root, 300, seed=6)
        assert len(build_index(cfg).shards) == shards
        found.append([g.to_dict() for g in find_duplicates(cfg).found])
    assert found[0] == found[1] and len(found[0]) == 28


def test_flat_shards_with_retired_rows_answer_as_their_selector_would() -> None:
    """Flat shards are searched without their (slow) selector, the skipped rows dropped after: crowds of
    retired copies in front of a live row must not hide it."""
    rng = np.random.default_rng(9)
    base = clustered(100, DIM, seed=9)
    vectors = np.stack([near_copy(base[i // 20], rng) for i in range(2000)])  # 100 crowds of 20 copies
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    retired = np.sort(rng.choice(2000, 1500, replace=False)).astype(np.int64)
    shard = Shard(index, vectors, pa.table({"image_id": [str(i) for i in range(2000)]}), retired)
    target = Target(shard)
    for k in (3, 11):
        scores, hits = target.search(base, k, 0.96, 1, 1)
        params = faiss.SearchParameters()
        params.sel = target.selector
        want_scores, want = index.search(base, k, params=params)
        assert not np.isin(hits, retired).any()
        for query in range(len(base)):
            wanted = set(want[query][want_scores[query] >= 0.96].tolist())
            assert wanted <= set(hits[query][scores[query] >= 0.96].tolist())


def test_groups_json_and_errors(local_index_config) -> None:
    cfg = local_index_config(**FAST)
    with pytest.raises(ConfigError, match="embedding index CONFIG"):
        find_duplicates(cfg)
    plant(Path(cfg.output.root), 200, seed=3)
    build_index(cfg)
    with pytest.raises(ConfigError, match="embedding duplicates CONFIG"):
        duplicate_groups(cfg)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        find_duplicates(cfg, cosine=1.5)
    group = find_duplicates(cfg).found[0]
    assert group.to_dict() == {
        "groupId": 1,
        "kind": group.kind,
        "members": [{"imageId": m.image_id, "uri": m.uri, "cosine": m.cosine} for m in group.members],
    }
    plant(Path(cfg.output.root), 40, seed=4, first=9000, units=1)  # committed after the index
    with pytest.raises(ConfigError, match="older than its committed embeddings"):
        find_duplicates(cfg)


def test_the_command_and_the_api_give_the_groups(local_index_config, tmp_path: Path, capsys) -> None:
    cfg = local_index_config(**FAST)
    planted = plant(Path(cfg.output.root), 200, seed=5)
    build_index(cfg)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    capsys.readouterr()
    assert cli.main(["duplicates", str(config), "--cosine", "0.98"]) == 0
    said = json.loads(capsys.readouterr().out)
    groups = embedding.duplicate_groups(cfg)
    assert said["groups"] == len(groups) and said["cosine"] == 0.98
    check_groups(cfg, tuple(groups), planted)


def test_large_indexes_are_searched_in_ray_tasks(index_config) -> None:
    cfg = index_config(shards=3, local_rows=100, **FAST, factory="'IVF32,PQ16x4'", nprobe=8)
    planted = plant(Path(cfg.output.root), 600, seed=5)
    build_index(cfg)
    summary = find_duplicates(cfg)
    assert summary.executor == "ray"
    check_groups(cfg, summary.found, planted)
    here = cfg.model_copy(update={"index": cfg.index.model_copy(update={"local_rows": 10**6})})
    assert find_duplicates(here).found == summary.found


def test_demo_model_finds_planted_copies_of_sample_images(tmp_path: Path) -> None:
    """The demo model gives distinct images of one colour and shape cosines up to 0.999 (it was trained
    to tell those apart, nothing finer): the collection holds one image per colour and shape, and copies
    of 30 of them: byte copies, JPEG re-encodings (quality 60-80), resizes by 10-20%."""
    sample = tmp_path / "sample"
    write_sample(sample, count=48, seed=7)
    table = pq.read_table(sample / "manifest.parquet")
    rows, rng, planted = table.to_pylist(), np.random.default_rng(0), set()
    for n, source in enumerate(rng.choice(len(rows), 30, replace=False)):
        row, how = dict(rows[source]), ("bytes", "jpeg", "resize")[n % 3]
        path = sample / row["uri"]
        image, data, suffix = Image.open(path), path.read_bytes(), path.suffix
        if how != "bytes":
            if how == "resize":
                scale = rng.uniform(0.8, 0.9)
                image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            buffer = io.BytesIO()
            jpeg = how == "jpeg" or suffix == ".jpg"
            image.convert("RGB").save(buffer, "JPEG" if jpeg else "PNG", quality=int(rng.integers(60, 80)))
            data, suffix = buffer.getvalue(), ".jpg" if jpeg else suffix
        row["image_id"], row["uri"] = f"copy-{n:02d}-{how}", f"images/copy-{n:02d}{suffix}"
        (sample / row["uri"]).write_bytes(data)
        rows.append(row)
        planted.add(frozenset({rows[source]["image_id"], row["image_id"]}))
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), sample / "manifest.parquet")
    overrides = {
        "input.manifest": sample / "manifest.parquet",
        "output.root": tmp_path / "out",
        "model.version": "demo",
        "inference.device": "cpu",
        "run.executor": "standalone",
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    from embedding.job.run import run

    assert run(cfg)["index"]["rows"] == 78
    summary = find_duplicates(cfg)
    precision, recall = precision_recall(found_sets(summary.found), planted)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    kinds = {g.kind for g in summary.found if any(m.image_id.endswith("-bytes") for m in g.members)}
    assert kinds == {"exact"} and summary.exact_groups == 10
