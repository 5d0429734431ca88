"""Fixtures for the evaluation tests: a tiny saved checkpoint and synthetic files in every benchmark's format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep import synthetic, synthetic_bench
from pipeline.model.avllm import AVLLM

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory) -> dict[str, list[str]]:
    """{benchmark: the --data/--media-root arguments} of small synthetic files with real media."""
    root = tmp_path_factory.mktemp("bench")
    paths = synthetic_bench.generate(root, n=4, seed=0)
    for i, name in enumerate(("music_avqa", "ave")):
        (root / name).mkdir()
        getattr(synthetic, name)(root / name, 4, np.random.default_rng([0, i]))
    return {
        "mmbench": ["--data", str(paths["mmbench"])],
        "pope": ["--data", str(paths["pope"]), "--media-root", str(paths["pope"] / "images")],
        "music_avqa": ["--data", str(root / "music_avqa" / "avqa-test.json")],
        "ave": ["--data", str(root / "ave")],
        "mme": ["--data", str(paths["mme"])],
    }


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tiny_model_config) -> Path:
    """A tiny random model saved as a merged checkpoint would be."""
    path = tmp_path_factory.mktemp("ckpt")
    AVLLM.from_config(tiny_model_config("llama")).save_pretrained(path)
    return path
