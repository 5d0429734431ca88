"""The import-layer rule of ARCHITECTURE.md holds for the tree, and the checker catches an upward edge."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_layers", REPO / "scripts" / "check_layers.py")
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def test_the_tree_has_no_upward_or_sideways_import():
    proc = subprocess.run([sys.executable, "scripts/check_layers.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    assert "0 upward or sideways edge(s)" in proc.stdout


def write(root: Path, module: str, text: str) -> None:
    path = root / Path(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_upward_sideways_and_unlayered_imports_are_reported(tmp_path):
    write(tmp_path, "pipeline.model.avllm", "from pipeline.adapters.io import load_adapter\nimport pipeline.config\n")
    write(tmp_path, "pipeline.merge", "def f():\n    from pipeline.train.checkpoint import COMPLETE\n")
    write(tmp_path, "pipeline.eval.generate", "from data_prep.record import SkipSample\n")
    write(tmp_path, "pipeline.newthing", "")
    write(tmp_path, "pipeline.adapters.io", "from pipeline.model.avllm import AVLLM\nfrom . import base\n")
    found = check_layers.violations(tmp_path)
    text = "\n".join(found)
    assert "pipeline/model/avllm.py:1: pipeline.model imports pipeline.adapters.io (a higher layer)" in text
    assert "pipeline/merge.py:2: pipeline.merge imports pipeline.train.checkpoint (the same layer)" in text
    assert "pipeline/eval/generate.py:1: pipeline.eval imports data_prep.record (a higher layer)" in text
    assert "module pipeline.newthing is in no layer" in text
    assert not any(line.startswith("pipeline/adapters/io.py") for line in found)  # downward and relative: fine
    assert len(found) == 4
