"""Experiment trackers a run reports to (`train.report_to`): TensorBoard, Weights & Biases, MLflow.

Each tracker is one class registered under the name HF Trainer users know. The rank-0 logger gives each the run
config at the start, every logged step's metrics, and the loss curve (`loss.png`) at the end; it never asks which
tracker it talks to. A resumed run continues the same tracker run: the ids are kept in the run directory.
"""

from __future__ import annotations

import importlib.util
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.rundir import RunDir

TRACKERS: dict[str, type[Tracker]] = {}


class Tracker(ABC):
    """One experiment tracker. Subclasses register with `name=` (the `train.report_to` value) and `package=` (the
    module it imports, installed by the extra of the same name)."""

    name: ClassVar[str]
    package: ClassVar[str]

    def __init_subclass__(cls, name: str, package: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name, cls.package = name, package
        TRACKERS[name] = cls

    @abstractmethod
    def __init__(self, run_dir: RunDir, config: dict, start_step: int, run_id: str | None) -> None:
        """Start (or, given the `run_id` of a resumed run, continue) the tracker's run for `run_dir`;
        `config` is the resolved run config."""

    @property
    def run_id(self) -> str | None:
        """What a resumed run passes back to continue this tracker run (None: nothing to continue)."""
        return None

    @abstractmethod
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def finish(self, loss_plot: Path) -> None:
        """Attach the loss curve and close the run."""


def check_report_to(names: list[str]) -> None:
    """ValueError naming the first tracker that is unknown or whose package is missing."""
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ValueError(f"train.report_to: '{name}' is listed twice")
        if name not in TRACKERS:
            raise ValueError(f"train.report_to: '{name}' is not one of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name].package) is None:
            raise ValueError(
                f"train.report_to: '{name}' needs the {TRACKERS[name].package} package: pip install -e '.[{name}]'"
            )


def _config_text(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)


class TensorBoard(Tracker, name="tensorboard", package="tensorboard"):
    """Event files under the run's `tb/`: scalars `train/<metric>`, the config as text, the loss curve as an image."""

    def __init__(self, run_dir: RunDir, config: dict, start_step: int, run_id: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events logged after its checkpoint
        self.writer = SummaryWriter(str(run_dir.tensorboard), purge_step=start_step + 1 if start_step else None)
        if not start_step:
            # four leading spaces: TensorBoard renders the text as Markdown, this keeps it a code block
            self.writer.add_text("config", "\n".join("    " + line for line in _config_text(config).splitlines()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def finish(self, loss_plot: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(loss_plot) as image:
            self.writer.add_image("loss_curve", np.asarray(image.convert("RGB")), dataformats="HWC")
        self.writer.close()


class WandB(Tracker, name="wandb", package="wandb"):
    """A Weights & Biases run in project `WANDB_PROJECT` (default avtrain), named after the run directory, its local
    files under the run's `wandb/`. `WANDB_MODE=offline` keeps it on disk (`wandb sync` uploads it later)."""

    def __init__(self, run_dir: RunDir, config: dict, start_step: int, run_id: str | None) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "avtrain"),
            name=run_dir.root.resolve().name,
            dir=str(run_dir.root),
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
        )
        # the step is a metric of its own, so a resumed run may log steps again after its checkpoint
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")

    @property
    def run_id(self) -> str | None:
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({"train/step": step, **{f"train/{k}": v for k, v in metrics.items()}})

    def finish(self, loss_plot: Path) -> None:
        import wandb

        self.run.log({"loss_curve": wandb.Image(str(loss_plot))})
        self.run.finish()


class MLflow(Tracker, name="mlflow", package="mlflow"):
    """An MLflow run in experiment `MLFLOW_EXPERIMENT_NAME` (default avtrain) of the store `MLFLOW_TRACKING_URI`
    (MLflow's default when unset), named after the run directory: the config as flattened params and
    `config.yaml`, metrics `train/<metric>` by step, `loss.png` as an artifact."""

    def __init__(self, run_dir: RunDir, config: dict, start_step: int, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "avtrain")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.root.resolve().name).info.run_id
            self._log_config(run_id, config)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._run_id = run_id

    def _log_config(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        flat = _flatten(config)
        params = [Param(key, str(value)[:6000]) for key, value in flat.items()]  # MLflow's limit on a param value
        for start in range(0, len(params), 100):  # and on params per batch
            self.client.log_batch(run_id, params=params[start : start + 100])
        self.client.log_dict(run_id, config, "config.yaml")

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self._run_id, metrics=[Metric(f"train/{k}", v, now, step) for k, v in metrics.items()])

    def finish(self, loss_plot: Path) -> None:
        self.client.log_artifact(self._run_id, str(loss_plot))
        self.client.set_terminated(self._run_id)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (`model.llm`), the way `key=value` overrides name them."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
