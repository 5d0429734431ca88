"""Config loading: YAML + dotted overrides, and one-line errors that name the key and the file."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, save_config, to_dict
from pipeline.model.config import ModelConfig


@dataclass
class Run:
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    lr: float = 1e-3
    tags: list[str] = field(default_factory=list)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, f"model:\n  llm: {tmp_path}\n  num_frames: 8\nseed: 3\n")
    cfg = load_config(Run, path, ["model.num_frames=16", "lr=2e-4", "tags=a,b", "model.dtype=bf16"])
    assert cfg.model.llm == str(tmp_path) and cfg.model.num_frames == 16 and cfg.seed == 3
    assert cfg.lr == pytest.approx(2e-4) and cfg.tags == ["a", "b"] and cfg.model.dtype == "bf16"
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(Run, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("text, overrides, expected", [
    ("model:\n  llm: {tmp}\n  num_frame: 8\n", [], "unknown key 'model.num_frame'"),
    ("model:\n  llm: {tmp}\n", ["model.num_frames=eight"], "'model.num_frames' expects int, got 'eight'"),
    ("model:\n  llm: {tmp}/nope\n", [], "'model.llm' points at {tmp}/nope, which does not exist"),
    ("model:\n  llm: {tmp}\nseed: [1]\n", [], "'seed' expects int"),
    ("model:\n  llm: {tmp}\n  dtype: fp8\n", [], "model.dtype: 'fp8' is not one of fp32, bf16, fp16"),
    ("model:\n  llm: {tmp}\n", ["model.vision_projector=linear"], "model.vision_projector: 'linear'"),
    ("model:\n  llm: {tmp}\n", ["lr"], "override 'lr' must look like key=value"),
])
def test_errors_are_one_line_and_name_key_and_file(tmp_path, text, overrides, expected):
    path = write(tmp_path, text.format(tmp=tmp_path))
    with pytest.raises(ConfigError) as info:
        load_config(Run, path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert expected.format(tmp=tmp_path) in message
    if not overrides or "=" in overrides[0]:
        assert str(path) in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Run, tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, write(tmp_path, "model: [unclosed\n"))
