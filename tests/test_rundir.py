"""pipeline/rundir.py's export on a disk that fills up: one line naming the path and the space needed, the previous
export intact, no temp directory left."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors.torch import load_file

import pipeline.rundir as rundir
from pipeline.storage import WriteError


def linear(n: int) -> torch.nn.Module:
    return torch.nn.Linear(n, n, bias=False)


def test_export_that_does_not_fit_keeps_the_previous_one(small_disk):
    out = small_disk(256) / "final"
    small = linear(64)  # 16 KiB
    rundir.write_trainables(small, None, out)
    with pytest.raises(WriteError) as caught:
        rundir.write_trainables(linear(512), None, out)  # 1 MiB
    assert str(caught.value).startswith(f"{out.with_name('final.tmp')}: ")
    assert str(caught.value).endswith("about 1.0 MiB needed; free some space or write elsewhere")
    assert not out.with_name("final.tmp").exists()
    torch.testing.assert_close(load_file(out / rundir.TRAINABLES)["weight"], small.weight.detach())


def test_export_whose_write_fails_midway_leaves_no_temp_directory(tmp_path, monkeypatch):
    """Simulated in-process: the safetensors writer raises ENOSPC after the space check passed (the disk filled up
    meanwhile)."""
    out = tmp_path / "final"
    rundir.write_trainables(linear(8), None, out)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "save_file", full)
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'final.tmp'}: cannot write \(No space left on device\); "):
        rundir.write_trainables(linear(8), None, out)
    assert not (tmp_path / "final.tmp").exists()
    assert (out / rundir.TRAINABLES).is_file()
