"""The index follows each change of the committed units at the cost of the change.

Every change (units appended, retired, changed) is followed by an update, and the update's answers are
compared with those of an index rebuilt from scratch over the same units: equal on an exact index, within
0.01 of its recall@10 on compressed ones, and a retired id never comes back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedding.config import Config
from embedding.index.build import build_index
from embedding.index.search import Index
from embedding.index.store import index_dir, read_manifest
from embedding.store.partition import Partition
from tests.index.conftest import clustered, write_embeddings

DIM = 1024


def _answers(cfg: Config, queries: np.ndarray, k: int = 10) -> list[list[str]]:
    index = Index.for_version(cfg.output.root, "demo")
    return [[index.metadata(c)["image_id"] for c in index.nearest(q, k)] for q in queries]


def _rebuilt(cfg: Config, tmp_path: Path, queries: np.ndarray) -> list[list[str]]:
    """The answers of an index built from scratch over a copy of the same committed units."""
    copy = tmp_path / "rebuilt"
    shutil.copytree(cfg.output.root, copy, ignore=shutil.ignore_patterns("index"))
    other = cfg.model_copy(update={"output": cfg.output.model_copy(update={"root": str(copy)})})
    assert build_index(other).change.action == "build"
    return _answers(other, queries)


def _files(cfg: Config) -> dict[str, int]:
    """Every file of the index folder with its inode (a rewritten or copied file gets a new one)."""
    folder = Path(index_dir(cfg.output.root, "demo"))
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def _retire(cfg: Config, units: list[str]) -> None:
    Partition(cfg.output.root, "image", "demo").retire(units)


def test_append_retire_and_change_update_an_exact_index(local_index_config, tmp_path: Path) -> None:
    cfg = local_index_config(shards=2, compact_at=10)
    root = Path(cfg.output.root)
    ids = write_embeddings(root, clustered(600, DIM, seed=1), units=6)
    first = build_index(cfg)
    assert first.change.action == "build" and first.trained is not None
    queries = clustered(30, DIM, seed=2)
    before = _files(cfg)

    # Append: two new units (a second manifest file).
    new_ids = write_embeddings(root, clustered(100, DIM, seed=3), units=2, first=1000)
    update = build_index(cfg)
    assert update.change.action == "update" and update.change.added_units == 2
    assert update.rows == 700 and [s.delta for s in update.shards] == [False, False, True]
    after = _files(cfg)
    assert all(after.get(name) == inode for name, inode in before.items() if name != "index.json")
    assert _answers(cfg, queries) == _rebuilt(cfg, tmp_path / "1", queries)

    # Retire: a unit withdrawn from the manifest; its ids never come back.
    gone = {i for i in ids[:100]}
    _retire(cfg, ["unit00000"])
    update = build_index(cfg)
    assert update.change.action == "update" and update.change.retired_units == 1 and update.rows == 600
    answers = _answers(cfg, np.concatenate([queries, clustered(100, DIM, seed=1)[:20]]), k=50)
    assert not gone & {i for found in answers for i in found}
    assert _answers(cfg, queries) == _rebuilt(cfg, tmp_path / "2", queries)

    # Change: a unit committed again with other rows (a changed file, a retried error).
    write_embeddings(root, clustered(40, DIM, seed=4), units=1, first=1000)
    update = build_index(cfg)
    assert update.change.action == "update"
    assert (update.change.added_units, update.change.retired_units) == (1, 1)
    index = Index.for_version(cfg.output.root, "demo")
    held = [i for shard in index.shards for i in shard.meta.column("image_id").to_pylist()]
    live = [i for shard in index.shards for i in shard.live(np.arange(shard.meta.num_rows))]
    assert len(live) == update.rows == 590 and len(held) > len(live)  # tombstoned rows stay on disk
    assert _answers(cfg, queries) == _rebuilt(cfg, tmp_path / "3", queries)
    assert set(new_ids[:40]) <= {i for found in _answers(cfg, queries, k=590) for i in found}

    # Nothing changed: nothing done.
    assert build_index(cfg).change.action == "none"


@pytest.mark.parametrize(
    ("kind", "settings"),
    [
        ("hnsw", {"kind": "hnsw"}),
        ("ivfpq", {"factory": "'IVF32,PQ16x4'", "rerank": 100, "nprobe": 8}),
    ],
)
def test_updates_of_compressed_indexes_keep_the_rebuilds_recall(
    local_index_config, tmp_path: Path, kind: str, settings: dict
) -> None:
    # The synthetic clusters are no images of the demo model, so its text probes score low on them.
    cfg = local_index_config(
        shards=2, compact_at=10, self_check_queries=40, self_check_texts=4, min_recall=0.5, **settings
    )
    root = Path(cfg.output.root)
    vectors = clustered(2000, DIM, seed=5)
    write_embeddings(root, vectors, units=4)
    build_index(cfg)
    added = clustered(200, DIM, seed=6)
    write_embeddings(root, added, units=1, first=5000)
    _retire(cfg, ["unit00001"])
    update = build_index(cfg)
    assert update.change.action == "update", update.change
    assert update.self_check["new_rows_queries"] > 0 and update.self_check["text_queries"] == 4
    live = np.concatenate([vectors[:500], vectors[1000:], added])  # unit00001 retired
    live_ids = [f"img-{i:05d}" for i in [*range(500), *range(1000, 2000), *range(5000, 5200)]]
    queries = clustered(40, DIM, seed=7)
    truth = [{live_ids[i] for i in np.argsort(-(live @ q))[:10]} for q in queries]

    def recall(answers: list[list[str]]) -> float:
        return float(np.mean([len(set(a) & t) / 10 for a, t in zip(answers, truth, strict=True)]))

    updated, rebuilt = _answers(cfg, queries), _rebuilt(cfg, tmp_path, queries)
    assert recall(updated) >= recall(rebuilt) - 0.01
    retired = {f"img-{i:05d}" for i in range(500, 1000)}
    assert not retired & {i for found in _answers(cfg, vectors[500:1000:25], k=30) for i in found}


def test_compaction_and_retraining_thresholds(local_index_config) -> None:
    cfg = local_index_config(shards=2, compact_at=0.3, retrain_growth=2.0)
    root = Path(cfg.output.root)
    write_embeddings(root, clustered(400, DIM, seed=8), units=4)
    assert build_index(cfg).change.action == "build"
    write_embeddings(root, clustered(100, DIM, seed=9), units=1, first=1000)  # 100 of 500: under 0.3
    assert build_index(cfg).change.action == "update"
    write_embeddings(root, clustered(100, DIM, seed=10), units=1, first=2000)  # 200 of 600: past it
    trained = read_manifest(index_dir(cfg.output.root, "demo"), {}).trained
    compacted = build_index(cfg)
    assert compacted.change.action == "compaction" and "index.compact_at" in compacted.change.reason
    assert not any(s.delta or s.retired for s in compacted.shards) and compacted.rows == 600
    folder = Path(index_dir(cfg.output.root, "demo"))
    assert compacted.trained.sha256 == trained.sha256  # the same structure: not trained again
    assert [p.name for p in folder.glob("build-*")] == [compacted.trained.files["index"].split("/")[0]]
    write_embeddings(root, clustered(300, DIM, seed=11), units=1, first=3000)  # 900 rows: past 2x 400
    rebuilt = build_index(cfg)
    assert rebuilt.change.action == "build" and "retrain_growth" in rebuilt.change.reason
    assert rebuilt.trained_rows == 900
    assert build_index(cfg, asked="compact").change.action == "compaction"
    assert build_index(cfg, asked="rebuild").change.action == "build"
    named = {f.split("/")[0] for s in rebuilt.shards for f in s.files.values()}
    assert {p.name for p in folder.glob("build-*")} == {
        f.split("/")[0] for s in read_manifest(str(folder), {}).all_files() for f in s.files.values()
    } and named  # only the builds index.json names are left


@pytest.mark.slow  # a process of its own (embedding index, embedding sink, a job)
def test_small_fills_do_not_start_ray(local_index_config) -> None:
    """An index of a small collection is built in the index stage's own process (index.local_rows)."""
    cfg = local_index_config(shards=2)
    write_embeddings(Path(cfg.output.root), clustered(200, DIM, seed=12), units=2)
    script = (
        "import sys; from embedding.config import Config; from embedding.index.build import build_index; "
        "m = build_index(Config.model_validate_json(sys.stdin.read())); "
        "print(m.change.action, 'ray' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], input=cfg.model_dump_json(), capture_output=True, text=True, env=env
    )
    assert done.stdout.split() == ["build", "False"], done.stderr[-2000:]


def _index_command(cfg: Config, folder: Path, faults: str = "") -> subprocess.CompletedProcess:
    """`embedding index CONFIG` in a process of its own, with fault points armed."""
    config = folder / "index.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "EMBEDDING_FAULTS": faults}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "embedding.cli", "index", str(config)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow  # a process of its own (embedding index, embedding sink, a job)
@pytest.mark.parametrize("point", ["index.after_shards", "index.after_switch"])
@pytest.mark.parametrize("change", ["update", "compaction"])
def test_a_kill_at_any_step_leaves_the_old_index_or_the_new_one(
    local_index_config, tmp_path: Path, point: str, change: str
) -> None:
    cfg = local_index_config(shards=2, compact_at=10 if change == "update" else 0.01)
    root = Path(cfg.output.root)
    write_embeddings(root, clustered(300, DIM, seed=13), units=3)
    old = build_index(cfg)
    queries = clustered(10, DIM, seed=14)
    old_answers = _answers(cfg, queries)
    write_embeddings(root, clustered(60, DIM, seed=15), units=1, first=1000)
    _retire(cfg, ["unit00002"])

    killed = _index_command(cfg, tmp_path, faults=f"{point}:1")
    assert killed.returncode == -9, killed.stderr[-2000:]
    folder = Path(index_dir(cfg.output.root, "demo"))
    now = read_manifest(str(folder), {})
    if point == "index.after_shards":  # the old index, whole; the new files are not named by it
        assert now.build_id == old.build_id and _answers(cfg, queries) == old_answers
    else:  # the new one, whole
        assert now.build_id != old.build_id and now.change.action == change
        assert _answers(cfg, queries) == _rebuilt(cfg, tmp_path / "truth", queries)

    again = _index_command(cfg, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    final = read_manifest(str(folder), {})
    assert final.rows == 300 - 100 + 60 and _answers(cfg, queries) == _rebuilt(cfg, tmp_path / "t2", queries)
    named = {f.split("/")[0] for group in final.all_files() for f in group.files.values()}
    assert {p.name for p in folder.glob("build-*")} == named  # the killed change's files are gone


def test_an_update_whose_recall_falls_calls_for_a_build() -> None:
    from embedding.index.update import recall_fell

    check = {"queries": 200, "k": 10, "recall_at_k": 0.95, "text_queries": 32, "text_recall_at_k": 0.8}
    assert recall_fell(check, 0.97, 0.9)  # fell under the floor, and far under its build
    assert recall_fell({"queries": 200, "k": 10, "recall_at_k": 0.85}, None, 0.9)
    assert recall_fell({**check, "text_recall_at_k": 0.95}, 0.97, 0.9) is None  # above the floor
    assert recall_fell({**check, "text_recall_at_k": 0.8}, 0.805, 0.9) is None  # no worse than its build
    # 320 text results at 0.71: two standard errors are 0.05, so 0.7125 against a build's 0.725 is noise
    assert recall_fell({**check, "text_recall_at_k": 0.7125}, 0.725, 0.9) is None
    assert recall_fell({**check, "text_recall_at_k": 0.60}, 0.725, 0.9)
    assert recall_fell({"queries": 0}, 0.97, 0.9) is None  # no check, no verdict
