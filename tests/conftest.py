"""Shared fixtures: tiny random-init components written to disk once per session and loaded like real checkpoints."""

from __future__ import annotations

import hashlib
import os
import shutil

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants
from transformers.utils import logging as hf_logging

from data_prep import synthetic, synthetic_bench
from data_prep.shard import write_shards
from data_prep.synthetic import generate
from pipeline.config import load_config
from pipeline.model.avllm import AVLLM
from pipeline.model.config import ModelConfig
from pipeline.testing.tiny import write_tiny

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


@dataclass
class ModelOnly:
    model: ModelConfig = field(default_factory=ModelConfig)


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    """`tiny_components(family)` -> path of the model.yaml of tiny components for that LLM family (cached)."""
    made = {}

    def make(family: str = "llama"):
        if family not in made:
            made[family] = write_tiny(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return made[family]

    return make


def put_in_hub_cache(cache: Path, repo: str, files: Path) -> str:
    """Lay `files` out as huggingface_hub's cache holds a downloaded snapshot of `repo` at its main branch
    (`models--org--name/snapshots/<commit>/...`, `refs/main`; files copied, as the cache does without symlinks);
    returns the commit hash."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files, folder / "snapshots" / commit, dirs_exist_ok=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory, tiny_components) -> dict:
    """A Hugging Face cache (`HF_HUB_CACHE`) holding the tiny llama components as the repos tiny/llm, tiny/vision and
    tiny/audio: {"cache": its path, "commits": {repo: commit hash}}. Nothing is downloaded."""
    cache = tmp_path_factory.mktemp("hf-cache")
    components = tiny_components("llama").parent
    commits = {f"tiny/{part}": put_in_hub_cache(cache, f"tiny/{part}", components / part)
               for part in ("llm", "vision", "audio")}
    return {"cache": cache, "commits": commits}


@pytest.fixture
def offline_cache(monkeypatch, hub_cache):
    """`hub_cache` as this process's Hugging Face cache, offline (huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE
    at import: its constants are set)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


@pytest.fixture(scope="session")
def tiny_model_config(tiny_components):
    """`tiny_model_config(family, **overrides)` -> a validated ModelConfig for the tiny components."""

    def make(family: str = "llama", **overrides):
        extra = [f"model.{k}={v}" for k, v in overrides.items()]
        return load_config(ModelOnly, tiny_components(family), extra).model

    return make


@pytest.fixture(scope="session")
def train_data(tmp_path_factory, tiny_components) -> dict:
    """Synthetic shards of every source (train split) and tiny llama components."""
    root = tmp_path_factory.mktemp("train-data")
    raw = generate(root / "raw", n=16, seed=0)
    # shard directory -> its converter (image_qa: the POPE/MMBench-style image questions, in the LLaVA format)
    sources = {"music_avqa": "music_avqa", "ave": "ave", "llava": "llava", "audiocaps": "audiocaps", "image_qa": "llava"}
    for name, converter in sources.items():
        write_shards(converter, raw[name], "train", root / "shards" / name / "train", maxcount=8, progress=False)
    components = tiny_components("llama").parent
    return {"root": root, "shards": root / "shards", "components": components}


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


@pytest.fixture(scope="session")
def stage1_run(train_data, tmp_path_factory) -> Path:
    """A finished 8-step stage-1 run (2 DeepSpeed ranks) on `train_data`, shared by the training and launch tests."""
    from tests.train.conftest import REPO, common_overrides, run_train

    out = tmp_path_factory.mktemp("runs") / "stage1"
    return run_train(REPO / "configs/demo/stage1.yaml", common_overrides(train_data, out, max_steps=8, **{
        "train.epochs": 2, "optim.lr": 3e-3}))


@pytest.fixture
def small_disk(tmp_path):
    """Factory: `small_disk(kib, read_only=False)` mounts a real tmpfs of that size under tmp_path (a full disk, or a
    read-only one, for the write-failure tests); unmounted afterwards. Skips where mounting is not allowed (not root,
    no CAP_SYS_ADMIN)."""
    import subprocess

    mounts: list[Path] = []

    def mount(kib: int, read_only: bool = False) -> Path:
        where = tmp_path / f"disk-{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {proc.stderr.strip()}")
        mounts.append(where)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", str(where)], check=True)
