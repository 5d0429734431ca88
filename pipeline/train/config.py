"""The run config of `launch/train.py`: one YAML file, every section owned by the module that uses it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.adapters.config import AdapterConfig
from pipeline.data.config import DataConfig, SourceConfig
from pipeline.data.missing import MissingConfig
from pipeline.model.config import ModelConfig
from pipeline.train.trackers import check_report_to

EXISTING_RUN = ("refuse", "move")  # train.existing_run: see pipeline/train/output_dir.py


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03  # linear warmup over this share of the steps, then cosine decay to 0
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    gradient_accumulation_steps: int = 1

    def validate(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr: must be > 0, got {self.lr}")
        if not self.eps > 0:
            raise ValueError(f"optim.eps: must be > 0, got {self.eps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas: two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"optim.warmup_ratio: must be in [0, 1], got {self.warmup_ratio}")
        for key in ("weight_decay", "grad_clip"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"optim.{key}: must be >= 0, got {getattr(self, key)}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"optim.gradient_accumulation_steps: must be >= 1, got {self.gradient_accumulation_steps}")


@dataclass
class TrainConfig:
    device: str = "auto"  # auto (cuda if available) | cuda | cpu
    epochs: int = 1
    gradient_checkpointing: bool = False
    train_projectors: bool = True  # stage 2: keep training the projectors next to the adapter
    log_every: int = 1
    save_every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2
    dominance_every: int = 0  # log the Non-Text Dominance Rate every N steps (LoRA-family adapters)
    max_bad_steps: int = 5  # consecutive non-finite losses before saving and stopping
    # experiment trackers (pipeline/train/trackers.py): tensorboard, wandb, mlflow; [] for none
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    collective_timeout_minutes: float = 30.0  # a collective that waits longer for a rank ends the job (dead peer)
    existing_run: str = "refuse"  # output_dir already holds a run that this one would restart: refuse | move (aside)
    chunked_loss: bool = True  # LM head + cross-entropy over label positions only, in chunks (pipeline.model.loss)
    loss_chunk_tokens: int = 1024  # label positions per chunk of the chunked loss

    def validate(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"train.device: '{self.device}' is not one of auto, cuda, cpu")
        check_report_to(self.report_to)
        if not self.collective_timeout_minutes > 0:
            raise ValueError(
                f"train.collective_timeout_minutes: must be > 0 (minutes, fractions allowed), "
                f"got {self.collective_timeout_minutes}"
            )
        if self.loss_chunk_tokens < 1:
            raise ValueError(f"train.loss_chunk_tokens: must be >= 1, got {self.loss_chunk_tokens}")
        if self.existing_run not in EXISTING_RUN:
            raise ValueError(f"train.existing_run: '{self.existing_run}' is not one of {', '.join(EXISTING_RUN)}")
        for key, least in (
            ("epochs", 1),
            ("log_every", 1),
            ("max_bad_steps", 1),
            ("save_every", 0),
            ("keep_last", 0),
            ("dominance_every", 0),
        ):
            if getattr(self, key) < least:
                raise ValueError(f"train.{key}: must be >= {least}, got {getattr(self, key)}")


@dataclass
class TaskEvalConfig:
    bench: str = ""  # a launch/eval.py benchmark: mmbench, pope, music_avqa, ave, mme
    data: str = ""  # its official file or folder
    media_root: str | None = None  # where its media are (default: next to data)


@dataclass
class TaskConfig:
    """One task of a continual sequence: the shards it trains on (replacing data.sources) and its eval set."""

    name: str = ""
    sources: list[SourceConfig] = field(default_factory=list)
    eval: TaskEvalConfig = field(default_factory=TaskEvalConfig)


@dataclass
class ContinualConfig:
    """An ordered task sequence (see pipeline/continual.py); empty: one ordinary run."""

    tasks: list[TaskConfig] = field(default_factory=list)
    eval_batch_size: int = 16
    max_new_tokens: int = 16

    def validate(self) -> None:
        names = [t.name for t in self.tasks]
        for i, task in enumerate(self.tasks):
            where = f"continual.tasks[{i}]"
            if not task.name or not task.name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{where}.name: give each task a name of letters, digits, - and _ (got '{task.name}')")
            if names.count(task.name) > 1:
                raise ValueError(f"{where}.name: '{task.name}' names two tasks")
            if not task.sources:
                raise ValueError(f"{where}.sources: list the shard sets this task trains on")
            DataConfig(sources=task.sources).validate()
            if not task.eval.bench or not task.eval.data:
                raise ValueError(f"{where}.eval: set bench and data (the task's eval set)")
        if self.eval_batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("continual.eval_batch_size and continual.max_new_tokens must be >= 1")


@dataclass
class RunConfig:
    output_dir: str = "runs/train"
    stage: int = 2  # 1: projector pre-alignment; 2: instruction tuning with an adapter
    stage1_run: Path | None = None  # stage 2: the stage-1 run directory whose projectors it starts from
    deepspeed: Path | None = None  # a configs/ds/*.json; its batch/precision keys must agree with this file
    resume: str = "auto"  # auto: newest complete checkpoint in output_dir | none | a checkpoint dir
    max_steps: int = 0  # cap on optimizer steps (0: epochs decide)
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)  # missing-modality training (off at rate 0)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)

    def validate(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage: must be 1 or 2, got {self.stage}")
        if not self.output_dir.strip():
            raise ValueError("output_dir: empty; name the run directory to write")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(f"output_dir: {self.output_dir} is a file, not a directory; pick another output_dir")
        if self.max_steps < 0:
            raise ValueError(f"max_steps: must be >= 0 (0: epochs decide), got {self.max_steps}")
        if self.data.num_frames != self.model.num_frames:
            raise ValueError(
                f"data.num_frames={self.data.num_frames} differs from model.num_frames="
                f"{self.model.num_frames}; set both to the frames the model takes"
            )
        if self.data.batching == "pack" and self.data.max_tokens < self.model.max_length:
            raise ValueError(
                f"data.max_tokens={self.data.max_tokens} is below model.max_length={self.model.max_length}: "
                "a packed row must hold the longest sample; raise data.max_tokens"
            )
        if self.continual.tasks and self.stage != 2:
            raise ValueError("continual.tasks: a task sequence instruction-tunes adapters; set stage: 2")
        if self.continual.tasks and self.resume not in ("auto", "none"):
            raise ValueError("resume: a continual run resumes each task from its own directory; use auto or none")
        if self.continual.tasks:
            self.adapter.for_tasks(len(self.continual.tasks))  # the adapter can hold the sequence
        if self.resume not in ("auto", "none") and not Path(self.resume).is_dir():
            raise ValueError(f"resume: '{self.resume}' is neither auto, none, nor a checkpoint directory")
