"""One training loop for both stages, on a DeepSpeed engine (ZeRO 1/2/3, CPU+gloo or CUDA+NCCL).

`train` reads top to bottom in three parts: `prepare` (model, data, engine, resume, logs), `run_steps` (optimizer
steps until the planned total) and `finish` (final checkpoint, export, data report).

A step is one optimizer step over `gradient_accumulation_steps` micro-batches on every rank (an accumulation
`Window`). Checkpoints are taken at step boundaries, so a resumed run replays exactly the micro-batches an
uninterrupted run would have seen next. A non-finite loss on any rank drops that micro-batch on every rank (no
backward, so ranks stay in step); after `train.max_bad_steps` in a row the run saves a checkpoint and stops.
Before each window's first forward the ranks agree whether to go on (`go_on_or_stop`): a stop signal (SIGTERM or
SIGUSR1, a cluster's preemption or time-limit warning, `pipeline.train.preempt`) or a rank whose data ran dry
(`DataExhausted`: no full batch of decodable samples left in a worker's shards) stops every rank there, after one
complete checkpoint of the last finished step.

Loss normalisation: the step's loss is the mean over all label tokens of the window (every micro-batch on every
rank), whatever the split into micro-batches, packed rows and ranks: `window_items` counts them once per window
before the first forward (a micro-batch that replaces a dropped one keeps the window's count). The logged loss is
that mean.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Generator
from contextlib import closing, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d
from transformers import get_cosine_schedule_with_warmup

from pipeline.adapters import AttachReport, adapter_layers, aux_loss
from pipeline.adapters.dominance import DominanceProbe
from pipeline.config import save_config, to_dict
from pipeline.data.loader import DataExhausted, ShardLoader
from pipeline.model.loss import count_targets
from pipeline.rundir import RunDir, write_trainables
from pipeline.train.checkpoint import CheckpointError, damage, load_checkpoint, rng_state, save_checkpoint
from pipeline.train.config import RunConfig
from pipeline.train.ds_config import offloads_optimizer, resolve_ds_config
from pipeline.train.logging import MetricsLogger
from pipeline.train.output_dir import check_output_dir, move_aside
from pipeline.train.preempt import Preempted, StopRequest, ignore_stop_signals
from pipeline.train.stages import build_model, check_stage1_run


class TrainingStopped(RuntimeError):
    """Raised after too many consecutive non-finite losses (a checkpoint was saved first)."""


class OutOfData(RuntimeError):
    """Raised on every rank when some rank has no decodable batch left (a checkpoint was saved first); one line
    naming that rank, its shards and its skip counts."""


def pick_device(cfg: RunConfig) -> torch.device:
    if cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available")
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def single_process_env() -> None:
    """Without a launcher (`python launch/train.py ...`) no RANK/WORLD_SIZE is set and DeepSpeed would look for MPI:
    make this process rank 0 of a world of one, on a free local port."""
    if any(key in os.environ for key in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        return  # a launcher, or MPI (which DeepSpeed discovers), says who this process is
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return  # one of several `srun` tasks: not a world of one (launch through launch/slurm/train.sbatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def init_distributed(device: torch.device, timeout_minutes: float = 30.0) -> None:
    """The process group; a collective that waits `timeout_minutes` for a peer fails (gloo: an exception,
    `collective_timeout`; NCCL: its watchdog ends the process), so a dead or hung rank ends the job. Groups created
    later (DeepSpeed's) get the same bound from `bound_every_collective`."""
    single_process_env()
    if device.type == "cpu":
        # DeepSpeed JIT-compiles a shared-memory all-reduce op for CPU at init (~30 s); gloo does not need it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(
        dist_backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes)
    )


def bound_every_collective(timeout_minutes: float) -> None:
    """Give every process group of this rank the run's collective timeout. DeepSpeed runs ZeRO's reductions on groups
    it creates itself (a clone of the world group) without a timeout, which torch then sets to its default (30 minutes
    on gloo): a peer that went silent during a gradient reduction would hang this rank that long."""
    timeout = timedelta(minutes=timeout_minutes)
    for group in c10d._world.pg_map:  # torch lists no groups publicly; _set_pg_timeout is its setter
        c10d._set_pg_timeout(timeout, group)


def collective_timeout(exc: BaseException, cfg: RunConfig) -> str | None:
    """The one-line error for a collective that timed out waiting for a peer (None: `exc` is something else). Gloo
    does not say which rank went silent, only which operation waited; the line names this rank and that."""
    text = str(exc)
    if "Timed out" not in text and "timed out" not in text:
        return None
    backend = text.strip().splitlines()[0]
    return (
        f"rank {dist.get_rank() if dist.is_initialized() else 0}: another rank did not answer a collective within "
        f"train.collective_timeout_minutes={cfg.train.collective_timeout_minutes:g} (it died or hangs; see its log); "
        f"backend: {backend}"
    )


def close_distributed() -> None:
    """End the process group once every rank is done. Left to interpreter exit, gloo's worker threads can abort the
    process ("terminate called without an active exception", SIGABRT) after a run that succeeded. They even outlive
    this (DeepSpeed keeps its groups referenced), and one that takes the GIL while the interpreter finalizes aborts
    the same way, so a launcher leaves with `os._exit` once its output is flushed."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def config_hash(cfg: RunConfig) -> str:
    """Identity of what determines the training trajectory (not where it is written, how long it runs, or how long a
    collective waits for a peer)."""
    data = to_dict(cfg)
    for key in ("output_dir", "resume", "max_steps"):
        data.pop(key)
    data["train"].pop("report_to")  # where the logs go does not change the trajectory
    data["train"].pop("collective_timeout_minutes")
    data["train"].pop("existing_run")  # what happens to an earlier run in output_dir, not to this one
    data["adapter"]["targets"] = cfg.adapter.target_names  # unset targets hash as the defaults they stand for
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _resume_point(cfg: RunConfig, run_dir: RunDir, notes: list[str]) -> Path | None:
    """The checkpoint to resume from: `cfg.resume`, or with auto the newest complete one that is intact (`damage`,
    the files split over the ranks); a damaged one is skipped with a note. CheckpointError when none is intact."""
    if cfg.resume == "none":
        return None
    auto = cfg.resume == "auto"
    candidates = list(reversed(run_dir.complete_checkpoints())) if auto else [Path(cfg.resume)]
    for checkpoint in candidates:
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, damage(checkpoint, dist.get_rank(), dist.get_world_size()))
        problems = [p for part in gathered for p in part]
        if not problems:
            return checkpoint
        if not auto:
            raise CheckpointError(f"resume: {checkpoint} is damaged: {problems[0]}")
        notes.append(
            f"resume: skipping damaged checkpoint {checkpoint} ({len(problems)} bad files, e.g. {problems[0]})"
        )
    if candidates:
        raise CheckpointError(
            f"resume=auto: no checkpoint in {run_dir.checkpoints} is intact ({notes[-1]}); "
            "set resume=none and a new output_dir to start over"
        )
    return None


@dataclass
class Window:
    """The micro-batches of one optimizer step on this rank (the gradient accumulation window)."""

    loss: float = 0.0  # sum of the micro-batches' reported losses (Σ token losses / items each)
    items: float | None = None  # the window's label tokens / (gas x world): see `window_items`
    tokens: int = 0  # attended tokens
    micro: int = 0  # micro-batches that counted (a dropped non-finite one does not)
    dominance: float | None = None  # the Non-Text Dominance Rate, when this step probes it
    started: float = field(default_factory=time.time)


@dataclass
class Session:
    """What the parts of `train` share: the run's fixed setup and its position."""

    cfg: RunConfig
    run_dir: RunDir
    device: torch.device
    rank: int
    world: int
    engine: deepspeed.DeepSpeedEngine
    loader: ShardLoader
    report: AttachReport | None  # the attached adapter (stage 2), None in stage 1
    total: int  # optimizer steps of the whole run
    config_hash: str
    log: MetricsLogger
    dominance_every: int  # 0: the adapter has no A to probe, or no probing asked for
    stop: StopRequest  # a stop signal this rank received
    boundary: dict  # the loader position and RNG state at the last finished step: what a checkpoint saves
    step: int = 0
    saved: int = -1  # the step of the newest checkpoint this run saved or resumed from
    bad_in_row: int = 0
    dropped: int = 0
    micro_batches: int = 0  # micro-batches this rank ran forward (dropped ones too)
    dry: str | None = None  # why this rank's data ran out (`DataExhausted`)

    def at_step_end(self) -> None:
        self.boundary = {"data": self.loader.state_dict(), "rng": rng_state()}

    def save(self) -> None:
        """A complete checkpoint at the last finished step (every rank), whatever was pulled from the loader since."""
        save_checkpoint(
            self.engine,
            self.run_dir,
            self.step,
            {"data": self.boundary["data"]},
            self.cfg.adapter if self.report else None,
            self.cfg.train.keep_last,
            self.config_hash,
            self.boundary["rng"],
        )
        self.saved = self.step


def train(cfg: RunConfig, start_from: Path | None = None, task: int = 0) -> Path:
    """Run one stage; returns the run directory (`pipeline.rundir` describes it). `start_from` and `task`: see
    `pipeline.train.stages.build_model` (continual sequences)."""
    with StopRequest() as stop:
        session = prepare(cfg, start_from, task, stop)
        try:
            run_steps(session)
        except BaseException:  # a stop, or an error: end the progress bar's line before the message
            with suppress(Exception):  # (a full disk must not hide the error that is on its way)
                session.log.close()
            raise
        finish(session)
    return session.run_dir.root


# ---- 1. prepare: model, data, engine, resume ---------------------------------------------------------------------


def _engine(cfg: RunConfig, model: torch.nn.Module, ds_config: dict, total: int) -> deepspeed.DeepSpeedEngine:
    """The DeepSpeed engine with AdamW and the warmup-cosine schedule over `total` steps."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    beta1, beta2 = cfg.optim.betas
    optim_kwargs: dict[str, Any] = dict(lr=cfg.optim.lr, eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    optimizer = None
    if offloads_optimizer(ds_config):  # DeepSpeed's CPU Adam works on the offloaded fp32 partitions
        ds_config["optimizer"] = {"type": "AdamW", "params": {**optim_kwargs, "betas": [beta1, beta2]}}
    else:
        optimizer = torch.optim.AdamW(trainable, betas=(beta1, beta2), **optim_kwargs)
    warmup = int(round(cfg.optim.warmup_ratio * total))
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total),
    )
    bound_every_collective(cfg.train.collective_timeout_minutes)  # including the groups DeepSpeed just created
    return engine


def _total_steps(cfg: RunConfig, loader: ShardLoader) -> int:
    gas = cfg.optim.gradient_accumulation_steps
    per_epoch = loader.steps_per_epoch // gas
    if per_epoch < 1:
        raise ValueError(
            f"data: {loader.steps_per_epoch} micro-batches per rank per epoch are fewer than "
            f"optim.gradient_accumulation_steps={gas}; add data or lower the batch settings"
        )
    total = per_epoch * cfg.train.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def prepare(cfg: RunConfig, start_from: Path | None, task: int, stop: StopRequest) -> Session:
    """Process group, model of the stage, streaming loader, engine, run directory, resume point and logger."""
    run_dir = RunDir(cfg.output_dir)
    if cfg.stage == 2:
        check_stage1_run(cfg.stage1_run)
    move = check_output_dir(cfg)  # every rank decides before any of them moves anything
    device = pick_device(cfg)
    init_distributed(device, cfg.train.collective_timeout_minutes)
    rank, world = dist.get_rank(), dist.get_world_size()
    moved = move_aside(run_dir.root) if move and rank == 0 else None
    dist.barrier()
    ds_config = resolve_ds_config(cfg, world)
    torch.manual_seed(cfg.seed)

    model, report = build_model(cfg, start_from, task)
    model.to(device)
    loader = ShardLoader(
        cfg.data, model.build_processor(), rank, world, missing=cfg.missing, worker_init=ignore_stop_signals
    )
    total = _total_steps(cfg, loader)
    engine = _engine(cfg, model, ds_config, total)

    chash = config_hash(cfg)
    if rank == 0:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir.config)
        run_dir.ds_config.write_text(json.dumps(ds_config, indent=2))
    step = 0
    notes: list[str] = []
    resume = _resume_point(cfg, run_dir, notes)
    if resume is not None:
        state = load_checkpoint(engine, resume, chash)
        loader.load_state_dict(state["data"])
        step = state["step"]
    log = MetricsLogger(run_dir, total, step, rank == 0, cfg.train.report_to, to_dict(cfg))
    if moved is not None:
        log.note(f"moved the earlier run in {run_dir.root} aside to {moved} (train.existing_run=move)")
    if report is not None:
        log.note(f"adapter {report}")
    for note in notes:
        log.note(note)
    if resume is not None:
        log.note(f"resumed from {resume} at step {step}")
    # the Non-Text Dominance Rate is defined for LoRA-family adapters (A matrices); other adapters log none
    lora_family = report is not None and any(type(m).lora_family for m in adapter_layers(engine.module).values())
    return Session(
        boundary={"data": loader.state_dict(), "rng": rng_state()},
        saved=step if resume is not None else -1,
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        rank=rank,
        world=world,
        engine=engine,
        loader=loader,
        report=report,
        total=total,
        config_hash=chash,
        log=log,
        step=step,
        dominance_every=cfg.train.dominance_every if lora_family else 0,
        stop=stop,
    )


# ---- 2. run steps: micro-batches, accumulation windows, logs and periodic checkpoints -----------------------------


def run_steps(s: Session) -> None:
    """Optimizer steps until `s.total`, epoch after epoch. The micro-batches of a window are gathered before the
    first forward, so that their global label-token count normalises every one of them (`window_items`). The epoch's
    batches are closed when a step raises (a stop), so the DataLoader workers shut down now, not at interpreter exit."""
    gas = s.cfg.optim.gradient_accumulation_steps
    window = Window()
    pending: list[dict] = []
    with closing(_micro_batches(s)) as batches:  # a generator: closed on the way out
        for batch in batches:
            pending.append(_to_device(batch, s.device))
            if len(pending) < gas - window.micro:
                continue
            go_on_or_stop(s)
            if window.items is None:
                window.items = window_items(pending, s.device, s.world, gas)
            for micro in pending:
                micro_step(s, micro, window)
            pending = []
            if window.micro < gas:  # a non-finite micro-batch was dropped: the next one takes its place
                continue
            end_step(s, window)
            window = Window()
            if s.step >= s.total:
                return
    if s.dry is not None:  # meet the other ranks where they ask whether to go on: every rank stops there
        go_on_or_stop(s)


def _micro_batches(s: Session) -> Generator[dict, None, None]:
    """The loader's micro-batches, epoch after epoch until the last step; a rank whose data runs dry notes why in
    `s.dry` and ends early."""
    while s.step < s.total:
        with closing(s.loader.__iter__()) as epoch:
            try:
                yield from epoch
            except DataExhausted as exc:
                s.dry = str(exc)
                return


def go_on_or_stop(s: Session) -> None:
    """Where the ranks agree whether to go on, before a window's first forward (and before a micro-batch that
    replaces a dropped one): one all-reduce of this rank's stop signal and whether its data ran dry (the dry rank
    calls it without a batch). If any rank says stop, every rank saves the checkpoint of the last finished step
    (unless it has one) and raises the same: `OutOfData` when a rank ran dry, else `Preempted`."""
    signals, dry = _all_sum([float(s.stop.requested), float(s.dry is not None)], s.device)
    if not signals and not dry:
        return
    if s.saved != s.step:
        s.save()
    where = f"stopped after step {s.step} of {s.total} with a complete checkpoint in {s.run_dir.checkpoint(s.step)}"
    if dry:
        gathered: list = [None] * s.world
        dist.all_gather_object(gathered, s.dry)
        reasons = "; ".join(reason for reason in gathered if reason)
        raise OutOfData(f"{reasons}; {where}; fix or replace those shards, then run again with resume=auto")
    raise Preempted(f"{s.stop.why}: {where}; run again with resume=auto to continue")


def window_items(batches: list[dict], device: torch.device, world: int, gas: int) -> float:
    """The divisor of each micro-batch's summed token losses: the label tokens of the whole window (these
    micro-batches on every rank) / (gas x world). DeepSpeed divides each micro-batch's loss by gas and averages the
    gradients over the ranks, so the step's gradient is ∇(Σ token losses) / (label tokens of the window), however
    the window's samples are split into micro-batches, rows and ranks (HF Trainer's `num_items_in_batch`)."""
    total = _all_sum([float(sum(count_targets(b) for b in batches))], device)[0]
    return max(total, 1.0) / (gas * world)


def forward_backward(engine: deepspeed.DeepSpeedEngine, batch: dict, items: float, chunk: int) -> torch.Tensor | None:
    """Forward with the window's normalisation; backward (task loss plus the adapters' auxiliary losses) unless the
    loss is non-finite on some rank. Returns the loss, or None when it was dropped on every rank."""
    loss = engine(**batch, num_items_in_batch=items, loss_chunk_tokens=chunk).loss
    world = dist.get_world_size()
    if _all_sum([float(torch.isfinite(loss))], loss.device)[0] != world:
        return None
    engine.backward(loss + aux_loss(engine.module))  # auxiliary losses train the adapters, not the report
    return loss


def _attended_tokens(batch: dict) -> int:
    segments = batch.get("segment_ids")
    return int((segments >= 0).sum()) if segments is not None else int(batch["attention_mask"].sum())


def micro_step(s: Session, batch: dict, window: Window) -> bool:
    """Forward and backward of one micro-batch into `window`; False when a non-finite loss dropped it everywhere."""
    engine = s.engine
    s.micro_batches += 1
    probing = s.dominance_every and window.micro == 0 and (s.step + 1) % s.dominance_every == 0
    chunk = s.cfg.train.loss_chunk_tokens if s.cfg.train.chunked_loss else 0
    with DominanceProbe(engine.module) if probing else nullcontext() as probe:
        loss = forward_backward(engine, batch, window.items or 1.0, chunk)  # run_steps sets items first
    if loss is None:
        s.bad_in_row += 1
        s.dropped += 1
        s.log.note(f"step {s.step + 1}: non-finite loss on some rank, micro-batch dropped ({s.bad_in_row} in a row)")
        if s.bad_in_row >= s.cfg.train.max_bad_steps:
            s.save()
            raise TrainingStopped(
                f"{s.bad_in_row} consecutive non-finite losses at step {s.step}; checkpoint "
                f"saved in {s.run_dir.checkpoints}; lower optim.lr or check the data"
            )
        return False
    s.bad_in_row = 0
    engine.step()  # DeepSpeed steps the optimizer only at the window's last micro-batch
    window.loss += loss.item()
    window.tokens += _attended_tokens(batch)
    window.micro += 1
    if probe is not None:
        window.dominance = _all_sum([probe.result().rate], s.device)[0] / s.world
    return True


def end_step(s: Session, window: Window) -> None:
    """Count the optimizer step the window completed; log it and take a periodic checkpoint."""
    cfg = s.cfg
    s.step += 1
    s.at_step_end()
    counters = [window.loss, window.tokens, sum(s.loader.skipped.values())]
    loss_sum, tokens, skipped = _all_sum(counters, s.device)
    if s.step % cfg.train.log_every == 0 or s.step == s.total:
        gas = cfg.optim.gradient_accumulation_steps
        elapsed = max(time.time() - window.started, 1e-9)
        metrics = {
            "step": s.step,
            "loss": loss_sum / (gas * s.world),
            "lr": s.engine.get_lr()[0],
            "samples_per_s": cfg.data.micro_batch_size * gas * s.world / elapsed,
            "tokens_per_s": tokens / elapsed,
            "epoch": s.loader.epoch,
            "skipped_samples": int(skipped),
            "dropped_nonfinite": s.dropped,
        }
        if window.dominance is not None:
            metrics["nontext_dominance"] = window.dominance
        s.log.log(metrics)
    if cfg.train.save_every and s.step % cfg.train.save_every == 0 and s.step < s.total:
        s.save()


# ---- 3. finish: last checkpoint, export, data report ---------------------------------------------------------------


def finish(s: Session) -> None:
    s.save()
    write_trainables(s.engine.module, s.cfg.adapter if s.report else None, s.run_dir.final)
    gathered: list = [None] * s.world
    loader = s.loader
    mine = (dict(loader.skipped), loader.bad_shards, dict(loader.missing), loader.short_shards, s.micro_batches)
    dist.all_gather_object(gathered, mine)
    skipped = sum((Counter(part[0]) for part in gathered), Counter())
    missing = sum((Counter(part[2]) for part in gathered), Counter())
    if s.rank == 0:
        data_report = {
            "skipped": dict(skipped),
            "bad_shards": sorted({shard for part in gathered for shard in part[1]}),
            "short_shards": {path: list(counts) for part in gathered for path, counts in sorted(part[3].items())},
            "missing_modality": dict(missing),
            "micro_batches_per_rank": [part[4] for part in gathered],
        }
        s.run_dir.data_report.write_text(json.dumps(data_report, indent=2))
        s.log.note(f"skipped samples: {dict(skipped) or 'none'}")
        if s.cfg.missing.rate > 0:
            s.log.note(f"samples trained without a modality ({s.cfg.missing.fill}): {dict(missing) or 'none'}")
    s.log.close()
    dist.barrier()
