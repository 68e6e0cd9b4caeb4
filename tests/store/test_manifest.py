from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedding.errors import ConfigError
from embedding.store.manifest import detect_kind, find_files, plan_units, read_rows, resolve_uri, unit_size


def write_manifest(path: Path, n: int, row_group_size: int | None = None, **extra) -> Path:
    table = pa.table(
        {"image_id": [f"i{k}" for k in range(n)], "uri": [f"img/{k}.jpg" for k in range(n)], **extra}
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_units_are_stable_and_change_with_the_file(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.parquet", 10)
    first = plan_units(find_files([str(path)], {}), 4)
    again = plan_units(find_files([str(path)], {}), 4)
    assert [u.unit_id for u in first] == [u.unit_id for u in again]
    assert [(u.start, u.stop) for u in first] == [(0, 4), (4, 8), (8, 10)]
    write_manifest(path, 12)
    changed = plan_units(find_files([str(path)], {}), 4)
    assert not {u.unit_id for u in changed} & {u.unit_id for u in first}


@pytest.mark.parametrize(
    ("rows", "unit_rows", "size"),
    [(5, None, 16), (400, None, 50), (2_000, None, 250), (100_000, None, 1024), (100_000, 64, 64)],
)
def test_default_units_are_an_eighth_of_a_file_and_grow_to_a_cap(
    rows: int, unit_rows: int | None, size: int
) -> None:
    """A few hundred rows still make about 8 units (every CPU decodes); a large file gets units as large as
    the driver's per-unit cost asks for; `input.unit_rows` wins."""
    assert unit_size(rows, unit_rows) == size


def test_globs_folders_and_lists(tmp_path: Path) -> None:
    write_manifest(tmp_path / "a.parquet", 3)
    write_manifest(tmp_path / "b.parquet", 2)
    assert [f.num_rows for f in find_files([str(tmp_path / "*.parquet")], {})] == [3, 2]
    assert len(find_files([str(tmp_path)], {})) == 2
    with pytest.raises(ConfigError, match="no file matches"):
        find_files([str(tmp_path / "none-*.parquet")], {})


def test_missing_required_columns_fail_at_start(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "path": ["x.jpg"]}), path)
    with pytest.raises(ConfigError, match="neither an image manifest"):
        detect_kind(find_files([str(path)], {}), "auto")
    with pytest.raises(ConfigError, match="needs 'image_id'"):
        detect_kind(find_files([str(path)], {}), "image")


def test_not_parquet_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_text("not parquet")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        find_files([str(path)], {})


def test_read_rows_across_row_groups(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.parquet", 25, row_group_size=7)
    rows = read_rows(str(path), 5, 16, ["image_id"], {})
    assert rows.column("image_id").to_pylist() == [f"i{k}" for k in range(5, 16)]


def test_relative_uris_resolve_against_the_manifest_folder() -> None:
    assert resolve_uri("images/a.jpg", "/data/set") == "/data/set/images/a.jpg"
    assert resolve_uri("../a.jpg", "/data/set") == "/data/a.jpg"
    assert resolve_uri("images/a.jpg", "s3://b/set") == "s3://b/set/images/a.jpg"
    assert resolve_uri("https://h/a.jpg", "/data") == "https://h/a.jpg"
    assert resolve_uri("/abs/a.jpg", "s3://b") == "/abs/a.jpg"
