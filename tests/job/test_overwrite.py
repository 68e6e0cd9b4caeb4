"""The overwrite swap: killed after any step, on a local disk or an S3 server, the next run finishes it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from embedding.job.overwrite import recover_overwrites, replace_with, shadow_partition
from embedding.store.partition import Partition
from tests.store.test_partition import tables
from tests.support.faults import Crash


def partition(root) -> Partition:
    return Partition(root[0], "image", "v1", root[1])


def ids(part: Partition) -> list[str]:
    table = part.read("embeddings")
    return sorted(table.column("image_id").to_pylist()) if table.num_rows else []


def old_and_new(root) -> tuple[Partition, Partition]:
    target = partition(root)
    target.commit("old", *tables(2), {})
    target.commit("both", *tables(1, start=50), {})
    target.record_identity({"dim": 1})
    shadow = shadow_partition(target, "run2")
    shadow.commit("new", *tables(3, start=10), {})
    shadow.commit("both", *tables(1, start=60), {})
    shadow.record_identity({"dim": 2})
    return target, shadow


def test_an_unfinished_overwrite_run_is_dropped(output_root) -> None:
    target, _ = old_and_new(output_root)
    recover_overwrites(target)
    assert sorted(target.markers()) == ["both", "old"] and ids(target) == ["i0", "i1", "i50"]
    assert target.identity() == {"dim": 1}


@pytest.mark.parametrize(
    "point, nth",
    [("swap.list", 1), ("swap.after_move", 1), ("swap.after_move", 4), ("swap.before_cleanup", 1)],
)
def test_a_swap_killed_at_any_step_ends_as_an_uninterrupted_one(
    output_root, crash_at, point: str, nth: int
) -> None:
    target, shadow = old_and_new(output_root)
    crash_at(point, nth)
    with pytest.raises(Crash):
        replace_with(target, shadow)
    crash_at("none")
    recover_overwrites(target)
    if point == "swap.list":  # killed before the point of no return: the old output stays
        assert sorted(target.markers()) == ["both", "old"] and ids(target) == ["i0", "i1", "i50"]
        return
    assert sorted(target.markers()) == ["both", "new"]
    assert ids(target) == ["i10", "i11", "i12", "i60"]
    assert target.identity() == {"dim": 2}
    assert not target.fs.exists(shadow.base)


def test_swap_without_crash(output_root) -> None:
    target, shadow = old_and_new(output_root)
    replace_with(target, shadow)
    assert sorted(target.markers()) == ["both", "new"] and ids(target) == ["i10", "i11", "i12", "i60"]
    errors = target.read("errors")
    assert errors.num_rows == 0 and isinstance(errors, pa.Table)
