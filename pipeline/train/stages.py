"""What each stage loads, freezes and trains.

Stage 1 (projector pre-alignment): encoders and LLM frozen, projectors trained.
Stage 2 (instruction tuning): projectors loaded from the stage-1 run, the configured adapter attached to the LLM
(`adapter.scope`, default `[llm]`), adapter + projectors trained (projectors optional).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from pipeline.adapters import AttachReport, attach, mark_trainable
from pipeline.model.avllm import AVLLM
from pipeline.train.checkpoint import TRAINABLES, load_trainables
from pipeline.train.config import RunConfig


def check_stage1_run(stage1_run: Path) -> None:
    """Fail early, in one line, when the stage-1 run has no projector weights."""
    path = Path(stage1_run) / "final" / TRAINABLES
    with safe_open(str(path), framework="pt") as f:
        if not any(k.startswith("projectors.") for k in f.keys()):
            raise ValueError(f"stage1_run: {path} holds no projector weights (projectors.*)")


def build_model(cfg: RunConfig) -> tuple[AVLLM, AttachReport | None]:
    model = AVLLM.from_config(cfg.model)
    report = None
    if cfg.stage == 1:
        mark_trainable(model, ["projectors.*"])
    else:
        load_trainables(model, Path(cfg.stage1_run) / "final", prefixes=("projectors.",))
        report = attach(model, cfg.adapter)
        mark_trainable(model, ["projectors.*"] if cfg.train.train_projectors else [])
    if cfg.train.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, report
