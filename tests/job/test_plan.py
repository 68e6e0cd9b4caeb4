"""Planning without Ray: every fate of embedding.job.plan's docstring, on a Partition in tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.job.plan import Plan, RayTasks, make_plan
from embedding.stages.read import ReadSettings, unit_rows
from embedding.store.manifest import find_files, plan_units
from embedding.store.partition import Partition

UNIT = 4


def manifest(path: Path, ids: list[str | None]) -> Path:
    pq.write_table(pa.table({"image_id": pa.array(ids, pa.string()), "uri": [f"{i}.jpg" for i in ids]}), path)
    return path


def plan_for(
    root: Path,
    *paths: Path,
    retry_errors: bool = False,
    tasks: RayTasks | None = None,
    unit: int | None = UNIT,
) -> tuple[Plan, Partition]:
    files = find_files([str(p) for p in paths], {})
    part = Partition(str(root), "image", "v1")
    markers = part.markers()
    plan = make_plan("image", files, plan_units(files, unit, markers), part, markers, retry_errors, {}, tasks)
    if tasks is not None:  # the fates stay in Ray's object store until the read stage needs them
        plan.fates = tasks.get(plan.fates)
    return plan, part


def fates(
    plan: Plan, root: Path, retry_errors: bool = False
) -> dict[tuple[str, int], tuple[str | None, str | None, str | None]]:
    """(file name, row) -> (error code, message, adopted from) of every row the plan reads."""
    settings = ReadSettings([], True, False, {}, Partition(str(root), "image", "v1"), retry_errors)
    out = {}
    for task in plan.reads:
        for _, rows in unit_rows(task, settings, plan.fates):
            for row in rows.to_pylist():
                key = (os.path.basename(row["source_file"]), row["row_index"])
                out[key] = (row["error_code"], row["error_message"], row["adopt_from"])
    return out


def commit_as_done(part: Partition, plan: Plan, errors: dict[str, str] | None = None) -> None:
    """Commit every planned unit as the job would: each processed row embedded, or failed with a code."""
    errors = errors or {}
    for task in plan.reads:
        settings = ReadSettings([], True, False, {}, part, False)
        for unit, rows in unit_rows(task, settings, plan.fates):
            table = rows.to_pylist()
            preset = [r for r in table if r["error_code"]]
            failed = [r for r in table if not r["error_code"] and r["id"] in errors]
            good = [r for r in table if not r["error_code"] and r["id"] not in errors]
            emb = pa.table({"image_id": pa.array([r["id"] for r in good], pa.string())})
            bad = preset + failed
            err = pa.table(
                {
                    "image_id": pa.array([r["id"] for r in bad], pa.string()),
                    "error_code": [r["error_code"] or errors[r["id"]] for r in bad],
                    "attempts": pa.array([1] * len(bad), pa.int32()),
                    "row_index": pa.array([r["row_index"] for r in bad], pa.int64()),
                }
            )
            codes: dict[str, int] = {}
            for code in err.column("error_code").to_pylist():
                codes[code] = codes.get(code, 0) + 1
            marker = {
                "rows_embedded": emb.num_rows,
                "rows_failed": err.num_rows,
                "errors_by_code": codes,
                "source_file": task.file_uri,
                "start": unit.start,
                "stop": unit.stop,
            }
            part.commit(unit.unit_id, emb, err, marker)


def test_a_new_manifest_no_ids_and_repeated_ids(tmp_path: Path) -> None:
    a = manifest(tmp_path / "a.parquet", ["x0", None, "x2", "x0", "", "x5"])
    plan, _ = plan_for(tmp_path / "out", a)
    got = fates(plan, tmp_path / "out")
    assert len(got) == 6 and plan.counts.new == 3 and plan.counts.invalid == 2 and plan.counts.duplicates == 1
    assert got[("a.parquet", 1)][0] == got[("a.parquet", 4)][0] == "InvalidManifestRow"
    assert got[("a.parquet", 3)][0] == "DuplicateId" and "a.parquet row 0" in got[("a.parquet", 3)][1]
    assert all(got[("a.parquet", r)] == (None, None, None) for r in (0, 2, 5))


@pytest.mark.parametrize("rows_of_a", [["s0", "s1"], ["s9", "s0"]])
def test_the_first_of_two_files_in_manifest_order_wins(tmp_path: Path, rows_of_a: list[str]) -> None:
    """a.parquet sorts first, so its s0 is the first one wherever it stands in either file."""
    manifest(tmp_path / "a.parquet", rows_of_a)
    manifest(tmp_path / "b.parquet", ["s0", "s1"] if rows_of_a[0] == "s9" else ["s9", "s0"])
    plan, _ = plan_for(tmp_path / "out", tmp_path / "*.parquet")
    got = fates(plan, tmp_path / "out")
    duplicates = {k: v for k, v in got.items() if v[0] == "DuplicateId"}
    first_row = rows_of_a.index("s0")
    assert [k[0] for k in duplicates] == ["b.parquet"] * len(duplicates)
    assert any(f"a.parquet row {first_row}" in v[1] for v in duplicates.values())


def test_an_id_committed_from_another_file_is_a_duplicate_in_either_order(tmp_path: Path) -> None:
    """The issue's case: b.parquet (s0-s3) is committed; a new a.parquet sorts first and repeats s0."""
    b = manifest(tmp_path / "b.parquet", ["s0", "s1", "s2", "s3"])
    plan, part = plan_for(tmp_path / "out", b)
    commit_as_done(part, plan)
    manifest(tmp_path / "a.parquet", ["s0", "n1"])
    plan, _ = plan_for(tmp_path / "out", tmp_path / "*.parquet")
    got = fates(plan, tmp_path / "out")
    assert plan.counts.units_skipped == 1 and plan.counts.skipped_done == 4
    assert got[("a.parquet", 0)][0] == "DuplicateId" and "already committed" in got[("a.parquet", 0)][1]
    assert "b.parquet" in got[("a.parquet", 0)][1]
    assert got[("a.parquet", 1)] == (None, None, None) and plan.counts.new == 1


def test_committed_units_are_skipped_and_their_errors_retried(tmp_path: Path) -> None:
    a = manifest(tmp_path / "a.parquet", [f"r{i}" for i in range(8)] + ["r0"])
    plan, part = plan_for(tmp_path / "out", a)
    commit_as_done(part, plan, errors={"r1": "FetchFailed", "r2": "InvalidImageFormat", "r5": "Timeout"})
    again, _ = plan_for(tmp_path / "out", a)
    assert again.counts.units_skipped == 1  # rows 8: only the DuplicateId, a manifest error, never retried
    assert {u.mode for u in again.todo.values()} == {"retry"}
    assert sorted(u.expected for u in again.todo.values()) == [1, 1]  # r1 in one unit, r5 in the other
    got = fates(again, tmp_path / "out")
    assert sorted(got) == [("a.parquet", 1), ("a.parquet", 5)]
    everything, _ = plan_for(tmp_path / "out", a, retry_errors=True)
    assert sorted(fates(everything, tmp_path / "out", retry_errors=True)) == [
        ("a.parquet", 1),
        ("a.parquet", 2),
        ("a.parquet", 5),
    ]


def test_a_file_keeps_the_unit_size_it_was_committed_with(tmp_path: Path) -> None:
    """A changed `input.unit_rows` (or default) applies to new files: committed units are never rewritten,
    a half-done file resumes with its own units, and each row is in exactly one unit."""
    a = manifest(tmp_path / "a.parquet", [f"a{i}" for i in range(10)])
    plan, part = plan_for(tmp_path / "out", a)  # units of 4: rows 0-3, 4-7, 8-9
    commit_as_done(part, plan)
    b = manifest(tmp_path / "b.parquet", [f"b{i}" for i in range(10)])
    for unit, b_units in ((8, [(0, 8), (8, 10)]), (None, [(0, 10)])):  # another size; the default (>= 16)
        plan, _ = plan_for(tmp_path / "out", a, b, unit=unit)
        assert not plan.superseded and plan.counts.units_skipped == 3
        assert sorted((u.start, u.stop) for u in plan.todo.values()) == b_units
        assert sorted(fates(plan, tmp_path / "out")) == [("b.parquet", r) for r in range(10)]
    # A file interrupted half-way resumes with the size of its committed units.
    c = manifest(tmp_path / "c.parquet", [f"c{i}" for i in range(10)])
    plan, part = plan_for(tmp_path / "out", c, unit=3)
    commit_as_done(part, _only(plan, [u for u in plan.todo.values() if u.start < 6]))
    again, _ = plan_for(tmp_path / "out", a, c, unit=None)
    assert not again.superseded and sorted((u.start, u.stop) for u in again.todo.values()) == [
        (6, 9),
        (9, 10),
    ]
    assert sorted(fates(again, tmp_path / "out")) == [("c.parquet", r) for r in range(6, 10)]


def _only(plan: Plan, units: list) -> Plan:
    """The plan narrowed to some of its units (a run killed after committing them)."""
    keep = {u.unit_id for u in units}
    reads = [
        type(task)(task.file_uri, task.file_index, tuple(u for u in task.units if u.unit_id in keep))
        for task in plan.reads
    ]
    plan.reads = [t for t in reads if t.units]
    return plan


def test_a_changed_file_adopts_embedded_rows_and_drops_removed_ones(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.parquet", ["k0", "k1", "k2", "k3", "k4", "k5"])
    plan, part = plan_for(tmp_path / "out", path)
    commit_as_done(part, plan, errors={"k2": "NotFound"})
    old_units = set(part.markers())
    manifest(path, ["k0", "k1", "k2", "k4", "k5", "k6", "k7"])  # k3 removed; k6, k7 new
    plan, _ = plan_for(tmp_path / "out", path)
    assert set(plan.superseded) == old_units and not set(plan.todo) & old_units
    got = fates(plan, tmp_path / "out")
    adopted = {row: f[2] for (_, row), f in got.items() if f[2]}
    assert sorted(adopted) == [0, 1, 3, 4]  # k0, k1, k4, k5 take their embeddings over
    assert set(adopted.values()) <= old_units
    assert got[("m.parquet", 2)] == (None, None, None)  # k2 failed before: planned again
    assert plan.counts.adopted == 4 and plan.counts.new == 3
    assert set().union(*plan.adopters.values()) <= set(plan.todo)


def test_touch_and_copies_of_the_same_bytes_keep_units_other_bytes_rekey(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.parquet", ["t0", "t1", "t2"])
    plan, part = plan_for(tmp_path / "out", path)
    commit_as_done(part, plan)
    os.utime(path, (1, 1))  # touch (to any time)
    shutil.copy(path, tmp_path / "copy.parquet")
    os.replace(tmp_path / "copy.parquet", path)  # cp of the same bytes
    plan, _ = plan_for(tmp_path / "out", path)
    assert not plan.todo and plan.counts.units_skipped == 1
    # Other content of the same size and the same mtime (cp -p, rsync -t): new units.
    stat = path.stat()
    other = tmp_path / "other.parquet"
    manifest(other, ["t0", "t1", "t9"])
    assert other.stat().st_size == stat.st_size
    os.replace(other, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plan, _ = plan_for(tmp_path / "out", path)
    assert len(plan.todo) == 1 and plan.superseded and plan.counts.adopted == 2


def test_a_file_that_left_the_manifest_is_superseded(tmp_path: Path) -> None:
    a = manifest(tmp_path / "a.parquet", ["a0", "a1"])
    b = manifest(tmp_path / "b.parquet", ["b0"])
    plan, part = plan_for(tmp_path / "out", a, b)
    commit_as_done(part, plan)
    b_units = {u for u, m in part.markers().items() if m["source_file"].endswith("b.parquet")}
    plan, _ = plan_for(tmp_path / "out", a)
    assert set(plan.superseded) == b_units and not plan.todo


def test_planning_in_buckets_gives_the_same_fates(tmp_path: Path, monkeypatch) -> None:
    from embedding.job import plan as planning

    ids = [f"id{i % 40}" if i % 7 else None for i in range(120)]
    path = manifest(tmp_path / "m.parquet", ids)
    one, _ = plan_for(tmp_path / "out", path)
    monkeypatch.setattr(planning, "ROWS_PER_BUCKET", 16)
    monkeypatch.setattr(planning, "ROWS_PER_TASK", 8)
    many, _ = plan_for(tmp_path / "out", path)
    assert len(many.fates) > 4
    assert fates(one, tmp_path / "out") == fates(many, tmp_path / "out")
    assert one.counts == many.counts
    assert np.sum([f.num_rows for f in many.fates]) == one.fates[0].num_rows


@pytest.mark.parametrize("buckets", [1, 3], ids=["one-bucket", "three-buckets"])
def test_planning_in_ray_tasks_gives_the_same_fates(
    tmp_path: Path, monkeypatch, ray_local, buckets: int
) -> None:
    """The path large manifests take: the stages run as Ray tasks, with one bucket and with several."""
    from embedding.job import plan as planning

    a = manifest(tmp_path / "a.parquet", [f"id{i % 30}" if i % 7 else None for i in range(60)])
    b = manifest(tmp_path / "b.parquet", [f"id{i}" for i in range(20, 50)])
    done, part = plan_for(tmp_path / "out", b)
    commit_as_done(part, done, errors={"id25": "FetchFailed"})
    local, _ = plan_for(tmp_path / "out", a, b)
    monkeypatch.setattr(planning, "ROWS_PER_BUCKET", 90 // buckets)
    monkeypatch.setattr(planning, "ROWS_PER_TASK", 16)
    remote, _ = plan_for(tmp_path / "out", a, b, tasks=RayTasks())
    assert len(remote.fates) == buckets
    assert fates(remote, tmp_path / "out") == fates(local, tmp_path / "out")
    assert remote.counts == local.counts and remote.counts.duplicates > 0
