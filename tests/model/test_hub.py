"""Model references: local directories and Hub ids resolved through the Hugging Face cache, offline, pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.model.hub import ModelRefError, fetch_command, is_hub_id, local_dir, pin, resolve
from tests.conftest import ModelOnly


def test_what_reads_as_an_id():
    assert is_hub_id("org/name") and is_hub_id("org/name@v1.0") and is_hub_id("meta-llama/Llama-2-7b-chat-hf")
    assert not is_hub_id("/abs/org/name") and not is_hub_id("runs/demo/components/llm")
    assert not is_hub_id("./org") and not is_hub_id("~/models/x") and not is_hub_id(Path("org/name"))
    assert fetch_command("org/name") == "hf download org/name"
    assert fetch_command("org/name@v1.0") == "hf download org/name --revision v1.0"


def test_cached_id_resolves_offline_and_pins_to_its_commit(offline_cache):
    commit = offline_cache["commits"]["tiny/llm"]
    snapshot = offline_cache["cache"] / "models--tiny--llm" / "snapshots" / commit
    for ref in ("tiny/llm", "tiny/llm@main", f"tiny/llm@{commit}"):
        found = resolve(ref, "model.llm")
        assert found.path == snapshot and found.pinned == f"tiny/llm@{commit}"
        assert (found.path / "config.json").is_file()
    assert local_dir(f"tiny/llm@{commit}") == snapshot


def test_local_directory_wins_and_stays_as_given(tmp_path, monkeypatch, offline_cache):
    (tmp_path / "tiny" / "llm").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert pin("tiny/llm", "model.llm") == "tiny/llm"
    assert local_dir("tiny/llm") == Path("tiny/llm")


@pytest.mark.parametrize("ref, command", [
    ("tiny/absent", "hf download tiny/absent"),
    ("tiny/llm@v9", "hf download tiny/llm --revision v9"),  # cached repo, revision never fetched
])
def test_uncached_id_offline_fails_in_one_line_naming_the_fetch_command(offline_cache, ref, command):
    with pytest.raises(ModelRefError) as info:
        resolve(ref, "model.llm")
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"'model.llm': {ref} is neither a local directory nor in")
    assert str(offline_cache["cache"]) in message and "HF_HUB_OFFLINE=1" in message
    assert message.endswith(f"fetch it with: {command}")


def test_model_config_pins_ids_and_names_the_file(tmp_path, offline_cache):
    commits = offline_cache["commits"]
    cfg = load_config(ModelOnly, None, ["model.llm=tiny/llm", "model.vision=tiny/vision@main",
                                        "model.audio=tiny/audio"]).model
    assert (cfg.llm, cfg.vision, cfg.audio) == tuple(f"{r}@{commits[r]}" for r in ("tiny/llm", "tiny/vision",
                                                                                    "tiny/audio"))
    assert cfg.tokenizer is None
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model:\n  llm: tiny/llm\n  audio: tiny/whisper\n")
    with pytest.raises(ConfigError, match=rf"^{yaml_file}: 'model.audio': tiny/whisper is neither .* fetch it with: "
                                          r"hf download tiny/whisper$"):
        load_config(ModelOnly, yaml_file)
