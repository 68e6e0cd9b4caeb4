"""The index stage: make the index of one model version hold exactly its committed units.

It builds (trains a structure on a sample and fills every shard), compacts (fills every shard anew
with the same structure), or updates (retires the units that left and fills delta shards with the new
ones), as embedding.index.update decides. Each writes a new build folder, checks the result, and then
writes index.json: the one switch readers follow. A kill at any step leaves the old index or the new
one (fault points `index.after_shards` and `index.after_switch`); folders that index.json no longer
names are removed after the switch, and on the next change after a kill.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import secrets
import time
from datetime import UTC, datetime

import faiss
import pyarrow.parquet as pq

from embedding.config import Config
from embedding.errors import ConfigError
from embedding.index.check import lowest_recall, self_check
from embedding.index.collection import Committed, check_versions, committed_units, train_sample
from embedding.index.fill import (
    FIXED,
    FillTarget,
    fill_shards,
    indexed_rows,
    split_files,
    write_trained,
)
from embedding.index.kinds import choose, create
from embedding.index.probes import text_probes
from embedding.index.store import (
    Change,
    IndexManifest,
    ShardFiles,
    index_dir,
    read_manifest,
    write_manifest,
)
from embedding.index.update import Plan, plan_change, recall_fell, tombstoned
from embedding.models.registry import get_version
from embedding.store import faults
from embedding.store.files import filesystem
from embedding.store.lease import Lease
from embedding.store.partition import FRAMES_TABLE, Partition

log = logging.getLogger(__name__)


def build_index(
    cfg: Config, force: bool = False, lease: Lease | None = None, asked: str = "auto"
) -> IndexManifest:
    """Make the index of cfg.model.version hold exactly the committed units under output.root: nothing
    when it does, else an update, a compaction or a build (`asked`: auto, rebuild or compact; `force`
    is rebuild).

    It takes the partition's lease (one writer per root and version) unless the caller, a run, holds it.
    """
    partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
    asked = "rebuild" if force else asked
    if lease is not None:
        return _change(cfg, partition, asked)
    with Lease(partition, "index-" + secrets.token_hex(4), cfg.run.lease_timeout_s, purpose="index build"):
        return _change(cfg, partition, asked)


def _current(folder: str, cfg: Config) -> IndexManifest | None:
    try:
        current = read_manifest(folder, cfg.output.storage_options)
    except ConfigError:
        return None  # no index yet, or one of an older format: build
    return current if current.model_version == cfg.model.version else None


def _change(cfg: Config, partition: Partition, asked: str) -> IndexManifest:
    started = time.time()
    committed = committed_units(cfg, partition)
    folder = index_dir(cfg.output.root, cfg.model.version)
    current = _current(folder, cfg)
    version = cfg.model.version
    dim = committed.identity.get("dim") or get_version(version, cfg.model).dim
    unit_rows = {u: committed.rows(u) for u in committed.files}
    kind = choose(sum(unit_rows.values()), dim, cfg.index)
    plan = plan_change(current, committed.digests, unit_rows, kind, committed.identity, cfg.index, asked)
    if plan.action == "none":  # what index.json holds, and (not written) that nothing was done
        assert current is not None
        remove_unnamed_builds(folder, current, cfg.output.storage_options)  # a killed change's folders
        return current.model_copy(update={"change": Change(action="none", reason=plan.reason)})
    check_versions(partition, [path for u in plan.added for path, _ in committed.files[u]])
    if plan.action == "update":
        assert current is not None
        manifest = _update(cfg, committed, current, plan, folder)
        reason = recall_fell(manifest.self_check, current.built_recall, cfg.index.min_recall)
        if reason:
            log.warning("index of %s: %s; building it anew", version, reason)
            plan = Plan("build", reason, sorted(committed.files), plan.retired)
            manifest = _fill_all(cfg, committed, None, plan, folder, dim)
    else:
        manifest = _fill_all(
            cfg, committed, current if plan.action == "compaction" else None, plan, folder, dim
        )
    assert manifest.change is not None
    manifest.change.seconds = manifest.build_seconds = round(time.time() - started, 3)
    faults.point("index.after_shards")
    write_manifest(folder, manifest, cfg.output.storage_options)  # the switch: readers load the new one
    faults.point("index.after_switch")
    remove_unnamed_builds(folder, manifest, cfg.output.storage_options)
    log.info("index of %s: %s (%s) in %.1f s", version, plan.action, plan.reason, manifest.build_seconds)
    return manifest


def _new_target(cfg: Config, folder: str, delta: bool) -> FillTarget:
    build_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    return FillTarget(
        cfg.output.root,
        cfg.output.storage_options,
        folder,
        f"build-{build_id}",
        cfg.index.rerank_dtype,
        delta,
    )


def _fill_all(
    cfg: Config, committed: Committed, current: IndexManifest | None, plan: Plan, folder: str, dim: int
) -> IndexManifest:
    """A build (current None: train anew) or a compaction (current's trained structure), every shard."""
    partition_files = [f for u in sorted(committed.files) for f in committed.files[u]]
    rows = sum(n for _, n in partition_files)
    target = _new_target(cfg, folder, delta=False)
    if current is not None and current.trained is not None:
        blob = _read_trained(folder, current.trained, cfg.output.storage_options)
        # A copy beside the new shards: the old folders are then named by nothing, and removed.
        trained_files, trained_rows = write_trained(blob, target), current.trained_rows
        kind_name, factory = current.kind, current.factory
    else:
        kind = choose(rows, dim, cfg.index)
        structure = create(kind, dim)
        if kind.needs_training:
            partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
            structure.train(train_sample(partition, partition_files, cfg.index.train_sample, seed=0))
        blob = faiss.serialize_index(structure).tobytes()
        trained_files, trained_rows = write_trained(blob, target), rows
        kind_name, factory = kind.kind, kind.factory
    paths = [p for p, _ in partition_files]
    groups = split_files(paths, [n for _, n in partition_files], min(cfg.index.shards, len(paths)))
    shards = fill_shards(cfg, blob, groups, rows, target)
    manifest = _manifest(cfg, committed, shards, kind_name, factory, target, plan)
    manifest.trained, manifest.trained_rows = trained_files, trained_rows
    manifest.self_check = self_check(
        folder,
        manifest,
        cfg.output.storage_options,
        cfg.index.self_check_queries,
        texts=text_probes(cfg, manifest),
    )
    manifest.built_recall = lowest_recall(manifest.self_check)
    return manifest


def _update(
    cfg: Config, committed: Committed, current: IndexManifest, plan: Plan, folder: str
) -> IndexManifest:
    """Retire the units that left, add delta shard(s) of the new ones; other shards are not touched."""
    assert current.trained is not None
    shards = tombstoned(current.shards, plan.retired)
    target = _new_target(cfg, folder, delta=True)
    if plan.added:
        blob = _read_trained(folder, current.trained, cfg.output.storage_options)
        added = [f for u in plan.added for f in committed.files[u]]
        rows = sum(n for _, n in added)
        per_shard = max(1, current.trained_rows // max(1, cfg.index.shards))
        count = max(1, min(len(added), -(-rows // per_shard)))
        groups = split_files([p for p, _ in added], [n for _, n in added], count)
        shards += fill_shards(cfg, blob, groups, rows, target)
    manifest = _manifest(cfg, committed, shards, current.kind, current.factory, target, plan)
    manifest.trained, manifest.trained_rows = current.trained, current.trained_rows
    manifest.built_recall = current.built_recall
    manifest.self_check = self_check(
        folder,
        manifest,
        cfg.output.storage_options,
        max(1, cfg.index.self_check_queries // 4) if cfg.index.self_check_queries else 0,
        texts=text_probes(cfg, manifest),
    )
    return manifest


def _read_trained(folder: str, trained: ShardFiles, storage_options: dict) -> bytes:
    """The trained, empty index a build left, checked against its SHA-256 in index.json."""
    fs, base = filesystem(folder, storage_options)
    with fs.open(posixpath.join(base, trained.files["index"]), "rb") as f:
        blob = f.read()
    if hashlib.sha256(blob).hexdigest() != trained.sha256["index"]:
        raise ConfigError(
            f"the trained index {trained.files['index']} of {folder} does not match its SHA-256 in "
            "index.json: rebuild with `embedding index --rebuild`"
        )
    return blob


def _manifest(
    cfg: Config,
    committed: Committed,
    shards: list[ShardFiles],
    kind: str,
    factory: str,
    target: FillTarget,
    plan: Plan,
) -> IndexManifest:
    partition = Partition(cfg.output.root, "image", cfg.model.version, cfg.output.storage_options)
    files = [p for u in sorted(committed.files) for p, _ in committed.files[u]]
    exact = kind == "flat"
    return IndexManifest(
        model_version=cfg.model.version,
        kind=kind,
        factory=factory,
        dim=committed.identity.get("dim") or get_version(cfg.model.version, cfg.model).dim,
        rows=sum(s.rows - s.retired_rows() for s in shards),
        shards=shards,
        rerank=0 if exact else cfg.index.rerank,
        rerank_dtype=cfg.index.rerank_dtype,
        nprobe=cfg.index.nprobe,
        ef_search=cfg.index.ef_search,
        metadata_columns=_metadata_columns(partition, files),
        sources=[posixpath.relpath(f, partition.base) for f in files],
        units=dict(sorted(committed.digests.items())),
        identity=committed.identity,
        built_at=datetime.now(UTC).isoformat(),
        build_seconds=0.0,
        build_id=target.build_folder.removeprefix("build-"),
        self_check={},
        change=Change(
            action=plan.action,
            reason=plan.reason,
            added_units=len(plan.added),
            retired_units=len(plan.retired),
        ),
    )


def _metadata_columns(partition: Partition, files: list[str]) -> list[str]:
    """The columns a result carries besides its id and scores (from an images and a frames file)."""
    names: list[str] = []
    for path in [next((f for f in files if f"/{t}/" in f), None) for t in ("embeddings", FRAMES_TABLE)]:
        if path:
            schema = indexed_rows(pq.read_schema(path, filesystem=partition.fs).empty_table()).schema
            names += [c for c in schema.names if c not in FIXED and c not in names]
    return names


def remove_unnamed_builds(folder: str, manifest: IndexManifest, storage_options: dict) -> None:
    """Remove the build folders index.json does not name (older builds, and those of a killed change)."""
    named = {rel.split("/")[0] for group in manifest.all_files() for rel in group.files.values()}
    fs, base = filesystem(folder, storage_options)
    for path in fs.ls(base, detail=False):
        name = posixpath.basename(path.rstrip("/"))
        if name.startswith("build-") and name not in named:
            fs.rm(path, recursive=True)
