"""Rank-0 training logs: a tqdm bar, `metrics.jsonl`, `loss.png` at the end, and the experiment trackers of
`train.report_to` (`pipeline.train.trackers`: config, metrics and loss curve to each).

Other ranks get a logger that does nothing, so the loop never branches on the rank to log.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from pipeline.rundir import RunDir
from pipeline.train.trackers import TRACKERS, Tracker


class MetricsLogger:
    def __init__(
        self, run_dir: RunDir, total_steps: int, start_step: int, enabled: bool, report_to: list[str], config: dict
    ) -> None:
        self.enabled = enabled
        self.path = run_dir.metrics
        self.run_dir = run_dir
        if not enabled:
            return
        if start_step == 0 and self.path.exists():
            self.path.unlink()
        elif start_step > 0 and self.path.exists():  # a resumed run drops what was logged after its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        ids = json.loads(run_dir.trackers.read_text()) if start_step and run_dir.trackers.exists() else {}
        self.trackers: list[Tracker] = [
            TRACKERS[name](run_dir, config, start_step, ids.get(name)) for name in report_to
        ]
        ids = {name: t.run_id for name, t in zip(report_to, self.trackers) if t.run_id is not None}
        tmp = run_dir.trackers.with_suffix(".tmp")
        tmp.write_text(json.dumps(ids, indent=2))
        tmp.replace(run_dir.trackers)
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        step = metrics["step"]
        scalars = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(scalars, step)
        self.bar.n = step
        self.bar.set_postfix(
            loss=f"{metrics['loss']:.4f}",
            lr=f"{metrics['lr']:.2e}",
            sps=f"{metrics['samples_per_s']:.1f}",
            tps=f"{metrics['tokens_per_s']:.0f}",
        )
        self.bar.refresh()

    def note(self, message: str) -> None:
        if self.enabled:
            self.bar.write(message)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        plot_loss(self.path, self.run_dir.loss_plot)
        for tracker in self.trackers:
            tracker.finish(self.run_dir.loss_plot)


def plot_loss(metrics: Path, out: Path) -> None:
    """The loss curve of a metrics.jsonl as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(out.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
