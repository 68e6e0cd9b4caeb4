"""A planted poison row: only it becomes an error row; the rest of its batch is embedded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.errors import ErrorCode
from embedding.job.run import run

pytestmark = pytest.mark.integration


def poisoned_manifest(folder: Path, sample_dir: Path, n: int = 40) -> Path:
    sample = pq.read_table(sample_dir / "manifest.parquet").slice(0, n)
    ids = sample.column("image_id").to_pylist()
    ids[n // 2] = "poison"
    uris = [str(sample_dir / u) for u in sample.column("uri").to_pylist()]
    path = folder / "poisoned.parquet"
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), path)
    return path


@pytest.mark.parametrize(
    "stage, code",
    [
        ("tests.support.stages:RaisingStage", ErrorCode.ENCODE_FAILED),
        ("tests.support.stages:CrashingStage", ErrorCode.WORKER_CRASHED),
    ],
    ids=["exception", "killed-process"],
)
def test_only_the_poison_row_fails(
    tmp_path: Path, sample_dir: Path, make_config, stage: str, code: str
) -> None:
    manifest = poisoned_manifest(tmp_path, sample_dir)
    cfg = make_config(
        str(manifest),
        inference={"stage_class": stage, "batch_size": 8, "max_task_retries": 1},
        run={"executor": "ray"},  # isolating the poison row is the Ray plan's
    )
    summary = run(cfg)
    root = Path(cfg.output.root)
    emb = pq.read_table(root / "embeddings").to_pandas()
    err = pq.read_table(root / "errors").to_pandas()
    assert len(emb) == 39 and "poison" not in set(emb["image_id"])
    assert list(err["image_id"]) == ["poison"] and list(err["error_code"]) == [code]
    assert summary["rows"]["failed_by_code"] == {code: 1}
