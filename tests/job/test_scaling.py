"""The stand-ins of benchmarks/scaling.py (a GPU stand-in encoder, a decode stand-in), and the property that
lets a job scale: however many rows, the driver receives one small typed result per unit, never rows.

The cluster test runs this file as a script (its own driver process, a simulated cluster of its own):
    python -m tests.job.test_scaling WORKDIR RESULT_JSON
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.standin import GpuStandInStage, instant_decode, unit_vectors
from embedding.config import Config
from embedding.errors import ConfigError
from embedding.job.checks import prepare
from embedding.models.catalog import preprocess_for
from embedding.models.registry import check_available
from embedding.stages.contract import RESULT, TASKS
from embedding.stages.decode import decode_images, media_settings, stage_for
from embedding.stages.rows import pack, unpack
from tests.support.runs import job_env, outputs, run_python

# Two runs of the same rows, cut into units of 128 and of 1,024 rows: what the driver receives per unit must
# not grow with the unit's rows.
ROWS = 4096
UNIT_ROWS = (128, 1024)
RESULT_BYTES_MAX = (
    1024  # one unit's result row; a single row's vector alone is 4,096 bytes, its pixels 12,288
)


def tiny_manifest(path: Path, rows: int) -> Path:
    images = []
    for i in range(8):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 30, 255 - i * 30, 90)).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    table = pa.table(
        {
            "image_id": [f"s{i:06d}" for i in range(rows)],
            "image": pa.array([images[i % 8] for i in range(rows)], pa.binary()),
        }
    )
    pq.write_table(table, path, row_group_size=1024)
    return path


def _config(manifest: Path, root: Path, **sections: dict) -> Config:
    tree: dict = {
        "input": {"manifest": [str(manifest)]},
        "output": {"root": str(root)},
        "model": {"version": "demo"},
        "inference": {"device": "cpu"},
        "index": {"enabled": False},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    return Config.model_validate(tree)


# ---- the stand-ins, without Ray ----


def test_scaling_standins_are_off_by_default_and_refused_when_not_importable(tmp_path: Path) -> None:
    assert Config().preprocess.stage_function is None and Config().inference.stage_class is None
    manifest = tiny_manifest(tmp_path / "m.parquet", 16)
    cfg = _config(manifest, tmp_path / "out", preprocess={"stage_function": "benchmarks.standin:no_such"})
    with pytest.raises(ConfigError, match=r"preprocess.stage_function: cannot import 'benchmarks.standin"):
        prepare(cfg)
    job = prepare(
        _config(
            manifest, tmp_path / "out", preprocess={"stage_function": "benchmarks.standin:instant_decode"}
        )
    )
    assert job.kind == "image"


def test_scaling_decode_standin_gives_what_decoding_gives(tmp_path: Path) -> None:
    cfg = Config()
    settings = media_settings(cfg, preprocess_for(check_available("demo", cfg.model)))
    assert stage_for(settings, None, instant_decode)[0] is instant_decode
    assert stage_for(settings, None)[0] is decode_images
    source = pq.read_table(tiny_manifest(tmp_path / "m.parquet", 40))
    nulls = pa.nulls(40, pa.string())
    rows = pa.table(
        {
            "unit_id": ["u"] * 40,
            "uri": nulls,
            "image": source.column("image"),
            "attempts": pa.array([0] * 40, pa.int32()),
            "error_code": pa.array(["InvalidImageFormat"] + [None] * 39, pa.string()),
            "error_message": nulls,
            "stage": nulls,
            "adopt_from": nulls,
        }
    )
    real, standin = (unpack(f(pack([rows]), settings))[0] for f in (decode_images, instant_decode))
    assert real.schema == standin.schema
    # The same rows, digests and errors (the failed row untouched); sizes are the model's, not the file's.
    keep = [
        c for c in real.column_names if not c.startswith("_m_") and c not in ("pixels", "width", "height")
    ]
    assert real.select(keep).equals(standin.select(keep))
    assert standin.column("width").to_pylist() == [None] + [64] * 39


def test_scaling_gpu_standin_holds_batches_and_returns_deterministic_unit_vectors(monkeypatch) -> None:
    monkeypatch.setenv("STANDIN_MS_PER_IMAGE", "0")
    stage = GpuStandInStage("demo", Config().model, Config().inference.model_copy(update={"batch_size": 4}))
    ids = [f"id{i}" for i in range(10)]
    n = len(ids)
    rows = pa.table(
        {
            "unit_id": ["u"] * n,
            "id": ids,
            "error_code": pa.array([None] * 9 + ["InvalidImageFormat"], pa.string()),
            "adopt_from": pa.nulls(n, pa.string()),
            "pixels": pa.array([b"\0" * 12] * n, pa.binary(12)),
        }
    )
    out = unpack(stage(pack([rows.slice(0, 6), rows.slice(6)])))
    assert [t.num_rows for t in out] == [6, 4]
    vectors = np.array(pa.concat_tables(out).column("embedding").to_pylist(), np.float32)
    assert np.allclose(vectors[:9], unit_vectors(ids[:9]))
    assert np.allclose(np.linalg.norm(vectors[:9], axis=1), 1.0)
    assert not vectors[9].any()  # an error row gets no vector
    assert len({v.tobytes() for v in vectors[:9]}) == 9


# ---- what the driver receives, on a simulated cluster ----


@pytest.mark.slow
@pytest.mark.cluster
def test_scaling_driver_receives_unit_results_only(tmp_path: Path) -> None:
    result = tmp_path / "result.json"
    env = {**job_env(), "STANDIN_MS_PER_IMAGE": "0.05"}
    run_python(["-m", "tests.job.test_scaling", str(tmp_path), str(result)], env, timeout=300)
    runs = json.loads(result.read_text())
    assert [r["unit_rows"] for r in runs] == list(UNIT_ROWS)
    for run in runs:
        units = ROWS // run["unit_rows"]
        assert run["embedded"] == ROWS
        # The driver's only data: one result row per unit, of the contract's schema (counts, paths, timings).
        assert run["taken_schemas"] == [RESULT.to_string()]
        assert run["results"] == units
        assert run["result_bytes_max"] <= RESULT_BYTES_MAX, run
        # And nothing it fetches from Ray's object store holds rows: only tasks it sent and results.
        assert set(run["fetched_schemas"]) <= {RESULT.to_string(), TASKS.to_string()}, run["fetched_schemas"]
        assert run["fetched_array_bytes_max"] <= RESULT_BYTES_MAX, run
        # The vectors are the stand-in's, so every row went through it.
        vectors, errors = outputs(run["root"])
        assert not errors and len(vectors) == ROWS
        ids = sorted(vectors)[:: ROWS // 64]
        assert np.allclose(np.stack([vectors[i] for i in ids]), unit_vectors(ids))
    small, large = runs
    # 8 times the rows per unit, the same bytes per unit: rows never travel with a result.
    assert large["result_bytes_max"] <= small["result_bytes_max"] * 1.1


def _driver(workdir: Path, result_path: Path) -> None:
    """The cluster test's driver: a simulated cluster (a head for the driver only, two worker nodes with
    a simulated GPU each), then one run per unit size, recording everything the driver gets from Ray."""
    import ray
    from ray.cluster_utils import Cluster

    from embedding.job import commit
    from embedding.job.run import run

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=256 * 1024 * 1024)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    manifest = tiny_manifest(workdir / "manifest.parquet", ROWS)
    record: dict = {}
    take, get = commit.Committer.take, ray.get

    def recording_take(self: commit.Committer, results: pa.Table) -> None:
        record["taken"].add(results.schema.to_string())
        record["results"] += results.num_rows
        record["bytes"].append(results.nbytes / max(results.num_rows, 1))
        take(self, results)

    def audit(value: object) -> None:
        if isinstance(value, list | tuple):
            for v in value:
                audit(v)
        elif isinstance(value, pa.Table | pa.RecordBatch):
            record["fetched"].add(value.schema.to_string())
        elif isinstance(value, np.ndarray | pa.Array | pa.ChunkedArray):
            record["arrays"] = max(record["arrays"], value.nbytes)

    def recording_get(refs, *args, **kwargs):
        value = get(refs, *args, **kwargs)
        audit(value)
        return value

    runs = []
    commit.Committer.take = recording_take  # type: ignore[method-assign]
    ray.get = recording_get
    try:
        for unit_rows in UNIT_ROWS:
            record.update(taken=set(), results=0, bytes=[], fetched=set(), arrays=0)
            root = workdir / f"out-{unit_rows}"
            cfg = _config(
                manifest,
                root,
                input={"unit_rows": unit_rows},
                ray={"address": cluster.address, "progress_bars": False},
                preprocess={"stage_function": "benchmarks.standin:instant_decode"},
                inference={
                    "batch_size": 256,
                    "stage_class": "benchmarks.standin:GpuStandInStage",
                    "min_actors": 2,
                    "max_actors": 2,
                    "num_cpus_per_actor": 0,
                    "num_gpus_per_actor": 1,
                },
                run={"executor": "ray"},
            )
            summary = run(cfg)
            runs.append(
                {
                    "unit_rows": unit_rows,
                    "root": str(root),
                    "embedded": summary["rows"]["embedded"],
                    "taken_schemas": sorted(record["taken"]),
                    "results": record["results"],
                    "result_bytes_max": max(record["bytes"]),
                    "fetched_schemas": sorted(record["fetched"]),
                    "fetched_array_bytes_max": record["arrays"],
                }
            )
    finally:
        commit.Committer.take = take  # type: ignore[method-assign]
        ray.get = get
        result_path.write_text(json.dumps(runs))
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("STANDIN_MS_PER_IMAGE", "0.05")  # before the nodes start: their workers inherit it
    _driver(Path(sys.argv[1]), Path(sys.argv[2]))
