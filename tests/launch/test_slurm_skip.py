"""The SLURM test cluster skips with a reason, never silently, where it cannot run."""

from __future__ import annotations

import pytest

from tests.launch import slurm_cluster


def test_skips_when_not_root(monkeypatch):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        slurm_cluster.require_slurm()


def test_skips_when_slurm_missing_and_no_apt(monkeypatch):
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 0)
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match="apt-get is not available"):
        slurm_cluster.require_slurm()
