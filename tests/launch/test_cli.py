"""`avtrain`: the console script pyproject declares, its --help, and every command's --help."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib

import pytest

from launch import cli
from tests.train.conftest import REPO, launch_env


def test_pyproject_declares_the_avtrain_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["avtrain"].partition(":")
    assert getattr(importlib.import_module(module), func) is cli.main


def test_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "--help"], cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: avtrain")
    for name in ("train", "merge", "eval", "compare", "demo", "shard", "synthetic", "tiny"):
        assert f"\n  {name} " in proc.stdout


@pytest.mark.parametrize("command, option", [
    ("train", "--estimate-memory"), ("merge", "--keep-adapters"), ("eval", "--predictions"),
    ("compare", "--adapters"), ("demo", "--nproc"), ("shard", "--source"), ("synthetic", "--out"), ("tiny", "--llm"),
])
def test_each_command_has_its_own_help(command, option, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["avtrain"])
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and option in out


def test_unknown_command_and_a_launcher_rank():
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "trian"], cwd=REPO, env=launch_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'trian'" in proc.stderr
    assert cli.parser().parse_args(["--local_rank=1", "train", "--config", "c.yaml"]).args == ["--config", "c.yaml"]
