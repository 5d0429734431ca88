"""One training loop for both stages, on a DeepSpeed engine (ZeRO 1/2/3, CPU+gloo or CUDA+NCCL).

A step is one optimizer step over `gradient_accumulation_steps` micro-batches on every rank. Checkpoints are taken at
step boundaries, so a resumed run replays exactly the micro-batches an uninterrupted run would have seen next.
A non-finite loss on any rank drops that micro-batch on every rank (no backward, so ranks stay in step); after
`train.max_bad_steps` in a row the run saves a checkpoint and stops.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import get_cosine_schedule_with_warmup

from pipeline.adapters import adapter_layers, aux_loss
from pipeline.adapters.core import LowRankLinear
from pipeline.adapters.dominance import DominanceProbe
from pipeline.config import save_config, to_dict
from pipeline.data.loader import ShardLoader
from pipeline.train.checkpoint import complete_checkpoints, load_checkpoint, save_checkpoint, write_trainables
from pipeline.train.config import RunConfig
from pipeline.train.ds_config import offloads_optimizer, resolve_ds_config
from pipeline.train.logging import MetricsLogger
from pipeline.train.stages import build_model, check_stage1_run


class TrainingStopped(RuntimeError):
    """Raised after too many consecutive non-finite losses (a checkpoint was saved first)."""


def pick_device(cfg: RunConfig) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> None:
    if device.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op for CPU at init (~30 s); gloo does not need it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def close_distributed() -> None:
    """End the process group once every rank is done. Left to interpreter exit, gloo's worker threads can abort the
    process ("terminate called without an active exception", SIGABRT) after a run that succeeded."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def config_hash(cfg: RunConfig) -> str:
    """Identity of what determines the training trajectory (not where it is written, nor how long it runs)."""
    data = to_dict(cfg)
    for key in ("output_dir", "resume", "max_steps"):
        data.pop(key)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _resume_point(cfg: RunConfig, run_dir: Path) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume != "auto":
        return Path(cfg.resume)
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def train(cfg: RunConfig, start_from: Path | None = None, task: int = 0) -> Path:
    """Run one stage; returns the run directory (see the README for its layout). `start_from` and `task`: see
    `pipeline.train.stages.build_model` (continual sequences)."""
    run_dir = Path(cfg.output_dir)
    if cfg.stage == 2:
        check_stage1_run(cfg.stage1_run)
    device = pick_device(cfg)
    init_distributed(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    ds_config = resolve_ds_config(cfg, world)
    torch.manual_seed(cfg.seed)

    model, report = build_model(cfg, start_from, task)
    model.to(device)
    processor = model.build_processor()
    loader = ShardLoader(cfg.data, processor, rank=rank, world_size=world, missing=cfg.missing)
    gas = cfg.optim.gradient_accumulation_steps
    per_epoch = loader.steps_per_epoch // gas
    if per_epoch < 1:
        raise ValueError(f"data: {loader.steps_per_epoch} micro-batches per rank per epoch are fewer than "
                         f"optim.gradient_accumulation_steps={gas}; add data or lower the batch settings")
    total = per_epoch * cfg.train.epochs
    total = min(total, cfg.max_steps) if cfg.max_steps else total

    trainable = [p for p in model.parameters() if p.requires_grad]
    optim_kwargs = dict(lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                        weight_decay=cfg.optim.weight_decay)
    optimizer = None
    if offloads_optimizer(ds_config):  # DeepSpeed's CPU Adam works on the offloaded fp32 partitions
        ds_config["optimizer"] = {"type": "AdamW", "params": {**optim_kwargs, "betas": list(optim_kwargs["betas"])}}
    else:
        optimizer = torch.optim.AdamW(trainable, **optim_kwargs)
    warmup = int(round(cfg.optim.warmup_ratio * total))
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, optimizer=optimizer, config=ds_config,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total))

    chash = config_hash(cfg)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    step = 0
    resume = _resume_point(cfg, run_dir)
    if resume is not None:
        state = load_checkpoint(engine, resume, chash)
        loader.load_state_dict(state["data"])
        step = state["step"]
    log = MetricsLogger(run_dir, total, step, enabled=rank == 0)
    if report is not None:
        log.note(f"adapter {report}")
    if resume is not None:
        log.note(f"resumed from {resume} at step {step}")

    def checkpoint() -> None:
        save_checkpoint(engine, run_dir, step, {"data": loader.state_dict()}, cfg.adapter if report else None,
                        cfg.train.keep_last, chash)

    # the Non-Text Dominance Rate is defined for LoRA-family adapters (A matrices); other adapters log none
    dominance_every = cfg.train.dominance_every if report is not None and any(
        isinstance(layer, LowRankLinear) for layer in adapter_layers(engine.module).values()) else 0
    engine.train()
    bad_in_row, dropped = 0, 0
    window_loss, window_tokens, window_micro, window_rate = 0.0, 0, 0, None
    tick = time.time()
    while step < total:
        for batch in loader:
            batch = _to_device(batch, device)
            probing = dominance_every and window_micro == 0 and (step + 1) % dominance_every == 0
            with DominanceProbe(engine.module) if probing else nullcontext() as probe:
                loss = engine(**batch).loss
                finite = _all_sum([float(torch.isfinite(loss))], device)[0] == world
                if finite:  # auxiliary adapter losses (LoRAMoE's balance loss) train the adapters, not the report
                    engine.backward(loss + aux_loss(engine.module))
            if not finite:
                bad_in_row += 1
                dropped += 1
                log.note(f"step {step + 1}: non-finite loss on some rank, micro-batch dropped ({bad_in_row} in a row)")
                if bad_in_row >= cfg.train.max_bad_steps:
                    checkpoint()
                    raise TrainingStopped(f"{bad_in_row} consecutive non-finite losses at step {step}; checkpoint "
                                          f"saved in {run_dir / 'checkpoints'}; lower optim.lr or check the data")
                continue
            bad_in_row = 0
            engine.step()
            window_loss += loss.item()
            window_tokens += int(batch["attention_mask"].sum())
            window_micro += 1
            if probe is not None:
                window_rate = _all_sum([probe.result().rate], device)[0] / world
            if window_micro < gas:
                continue
            step += 1
            loss_sum, tokens, skipped = _all_sum([window_loss, window_tokens, sum(loader.skipped.values())], device)
            if step % cfg.train.log_every == 0 or step == total:
                elapsed = max(time.time() - tick, 1e-9)
                metrics = {"step": step, "loss": loss_sum / (gas * world), "lr": engine.get_lr()[0],
                           "samples_per_s": cfg.data.micro_batch_size * gas * world / elapsed,
                           "tokens_per_s": tokens / elapsed, "epoch": loader.epoch,
                           "skipped_samples": int(skipped), "dropped_nonfinite": dropped}
                if window_rate is not None:
                    metrics["nontext_dominance"] = window_rate
                log.log(metrics)
            window_loss, window_tokens, window_micro, window_rate = 0.0, 0, 0, None
            tick = time.time()
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step < total:
                checkpoint()
            if step >= total:
                break

    checkpoint()
    write_trainables(engine.module, cfg.adapter if report else None, run_dir / "final")
    gathered = [None] * world
    dist.all_gather_object(gathered, (dict(loader.skipped), loader.bad_shards, dict(loader.missing)))
    skipped = sum((Counter(part[0]) for part in gathered), Counter())
    missing = sum((Counter(part[2]) for part in gathered), Counter())
    if rank == 0:
        bad_shards = sorted({shard for part in gathered for shard in part[1]})
        data_report = {"skipped": dict(skipped), "bad_shards": bad_shards, "missing_modality": dict(missing)}
        (run_dir / "data_report.json").write_text(json.dumps(data_report, indent=2))
        log.note(f"skipped samples: {dict(skipped) or 'none'}")
        if cfg.missing.rate > 0:
            log.note(f"samples trained without a modality ({cfg.missing.fill}): {dict(missing) or 'none'}")
    log.close()
    dist.barrier()
    return run_dir

