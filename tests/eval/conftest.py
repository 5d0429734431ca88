"""Constants for the evaluation tests; the fixtures `bench_data` and `checkpoint` live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
