"""Shared fixtures: tiny random-init components written to disk once per session and loaded like real checkpoints."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import dataclass, field

import pytest
from transformers.utils import logging as hf_logging

from pipeline.config import load_config
from pipeline.model.config import ModelConfig
from pipeline.model.tiny import write_tiny

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


@pytest.fixture(scope="session")
def tiny_model_config(tiny_components):
    """`tiny_model_config(family, **overrides)` -> a validated ModelConfig for the tiny components."""

    def make(family: str = "llama", **overrides):
        extra = [f"model.{k}={v}" for k, v in overrides.items()]
        return load_config(ModelOnly, tiny_components(family), extra).model

    return make
