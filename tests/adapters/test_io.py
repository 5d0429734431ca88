"""adapter.json: one format for kept adapters and run exports, and the run exports written before the format tag."""

from __future__ import annotations

import json

import pytest

from pipeline.adapters import AdapterConfig, attach
from pipeline.adapters.io import CONFIG_FILE, FORMAT, read_adapter_json, save_adapter
from pipeline.rundir import read_export, write_trainables
from tests.adapters.adapter_helpers import tiny_llama


def test_kept_adapter_and_export_share_one_format(tmp_path):
    model = tiny_llama()
    cfg = AdapterConfig(name="imod", rank=4, targets=["q_proj"])
    report = attach(model, cfg)
    save_adapter(model, tmp_path / "kept", cfg)
    write_trainables(model, cfg, tmp_path / "final")
    kept, export = (json.loads((tmp_path / d / CONFIG_FILE).read_text()) for d in ("kept", "final"))
    assert kept == export and kept["format"] == FORMAT and kept["layers"] == report.layers
    assert read_export(tmp_path / "final") == (cfg, report.layers)


def test_an_export_without_the_format_tag_reads_the_same(tmp_path):
    """Run directories written before the tag held {"adapter", "layers"} only: merge and stage 2 still read them."""
    model = tiny_llama()
    cfg = AdapterConfig(name="lora", rank=2, targets=["v_proj"])
    attach(model, cfg)
    write_trainables(model, cfg, tmp_path / "final")
    path = tmp_path / "final" / CONFIG_FILE
    old = json.loads(path.read_text())
    del old["format"]
    path.write_text(json.dumps(old))
    assert read_adapter_json(tmp_path / "final") == (cfg, old["layers"])
    path.write_text(json.dumps({**old, "format": "someone-else/2"}))
    with pytest.raises(ValueError, match=r"final/adapter.json: not an adapter description written by avtrain"):
        read_adapter_json(tmp_path / "final")
