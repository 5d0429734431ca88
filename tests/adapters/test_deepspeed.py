"""IMoD under real DeepSpeed: 2 CPU ranks (gloo), ZeRO-2 and ZeRO-3 with partitioned A, gradient accumulation 2."""

from __future__ import annotations

import pytest
from adapter_helpers import run_two_ranks


@pytest.mark.slow
def test_zero2_and_zero3_match_the_single_process_update(tmp_path):
    report = run_two_ranks("ds_imod_check.py", tmp_path / "report.json")
    for stage in ("zero2", "zero3"):
        assert report[stage]["injection_effect"] > 1e-2  # the constraints really changed the update
        assert report[stage]["max_abs_diff"] < 1e-5, report
