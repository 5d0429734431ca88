"""What each stage loads, freezes and trains.

Stage 1 (projector pre-alignment): encoders and LLM frozen, projectors trained.
Stage 2 (instruction tuning): projectors loaded from the stage-1 run, the configured adapter attached to the LLM
(`adapter.scope`, default `[llm]`), adapter + projectors trained (projectors optional). A later task of a continual
sequence starts from the previous task's run instead (its adapter and projectors), with DeLo's task `task` active.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.adapters import AttachReport, attach, mark_trainable, start_task
from pipeline.model.avllm import AVLLM
from pipeline.rundir import TRAINABLES, RunDir, export_has, load_trainables
from pipeline.train.config import RunConfig


def check_stage1_run(stage1_run: Path | None) -> RunDir:
    """The stage-1 run that stage 2 starts from; fails early, in one line, when there is none or it has no projector
    weights."""
    if stage1_run is None:
        raise ValueError("stage1_run: stage 2 starts from a stage-1 run directory; set stage1_run=DIR")
    run = RunDir(stage1_run)
    if not run.finished():
        raise ValueError(f"stage1_run: {stage1_run} has no final/{TRAINABLES} (is it a finished stage-1 run?)")
    if not export_has(run.final, "projectors."):
        raise ValueError(f"stage1_run: {run.final / TRAINABLES} holds no projector weights (projectors.*)")
    return run


def check_model(cfg: RunConfig) -> None:
    """The model section against its checkpoints and the adapter against the model, before any rank starts: the
    composed model as a meta-device skeleton (configs and tokenizer read, no weight), the towers' own checks
    (`model.vision_pool` against the patch grid, audio windows), and in stage 2 the adapter attached to it, which
    refuses targets that match no layer or that the method cannot adapt. ValueError/OSError in one line."""
    model = AVLLM.skeleton(cfg.model)
    if cfg.stage == 2:
        attach(model, cfg.adapter)


def select_trainables(model: AVLLM, cfg: RunConfig, task: int = 0) -> int:
    """Leave trainable exactly what the stage trains (stage 1: the projectors; stage 2: the attached adapter's share
    of task `task`, and the projectors unless `train.train_projectors` is off); returns the trainable count."""
    if cfg.stage == 1:
        return mark_trainable(model, ["projectors.*"])
    mark_trainable(model, ["projectors.*"] if cfg.train.train_projectors else [])
    start_task(model, task)  # methods with task slots (DeLo) train task `task`'s share only
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(cfg: RunConfig, start_from: Path | None = None, task: int = 0) -> tuple[AVLLM, AttachReport | None]:
    """The model of a stage, frozen but for what it trains. `start_from`: a finished run whose final trainables
    (adapter and projectors) replace the stage-1 projectors and the fresh adapter (continual tasks after the first)."""
    model = AVLLM.from_config(cfg.model)
    report = None
    if cfg.stage == 2:
        load_trainables(model, check_stage1_run(cfg.stage1_run).final, prefixes=("projectors.",))
        report = attach(model, cfg.adapter)
        if start_from is not None:
            load_trainables(model, RunDir(start_from).final)
    select_trainables(model, cfg, task)
    if cfg.train.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, report
