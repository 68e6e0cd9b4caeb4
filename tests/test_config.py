from pathlib import Path

import pytest
import yaml

from embedding.config import Config
from embedding.config_file import load_config
from embedding.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_hold_the_input_limits() -> None:
    cfg = Config()
    assert cfg.limits.max_image_bytes == 20 * 1024 * 1024
    assert (cfg.limits.min_image_side, cfg.limits.max_image_side) == (10, 16_000)
    assert (cfg.limits.min_text_words, cfg.limits.max_text_words) == (1, 70)


def test_unknown_key_is_refused_with_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, {"input": {"manifst": "m.parquet"}})
    with pytest.raises(ConfigError, match=r"unknown key 'input.manifst'"):
        load_config(path)


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(write(tmp_path, {"modle": {"version": "demo"}}))


def test_bad_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'inference\.batch_size'"):
        load_config(write(tmp_path, {"inference": {"batch_size": 0}}))


def test_set_overrides_parse_yaml_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        write(tmp_path, {"model": {"version": "demo"}}),
        [
            "inference.batch_size=8",
            "index.enabled=false",
            "input.manifest=data/m.parquet",
            "output.root=s3://b/o",
        ],
    )
    assert cfg.inference.batch_size == 8 and cfg.index.enabled is False
    assert cfg.input.manifest == [str(tmp_path / "data" / "m.parquet")]
    assert cfg.output.root == "s3://b/o"


def test_paths_in_the_file_are_relative_to_it(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"input": {"manifest": "m.parquet"}, "output": {"root": "out"}}))
    assert cfg.input.manifest == [str(tmp_path / "m.parquet")]
    assert cfg.output.root == str(tmp_path / "out")


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["novalue"])
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_resolved_config_round_trips() -> None:
    cfg = load_config(None, ["model.version=demo", "inference.precision=bf16"])
    again = Config.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("name", ["local.yaml", "cluster-2022-04-11.yaml", "cluster-2023-04-15.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert cfg.model.version
