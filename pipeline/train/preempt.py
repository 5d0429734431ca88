"""Stop at an optimizer-step boundary when the cluster asks (SIGTERM, SIGUSR1), with a checkpoint to come back to.

A signal handler only records the request. Before each step's first forward the loop sums the flags of all ranks in
one all-reduce (`loop.go_on_or_stop`, which also carries a rank whose data ran dry), so every rank learns of the
request at the same step, no rank enters a collective alone, and they all save one complete checkpoint of the last
finished step and leave with `PREEMPTED_EXIT`.
`launch/slurm/train.sbatch` turns that status into `scontrol requeue`; the requeued job resumes with `resume=auto`.

On one node, DeepSpeed's `deepspeed` command (its runner) does not pass SIGTERM on: it dies, and its child
`deepspeed.launcher.launch` and the ranks would train on unattended. So a rank started that way also watches the
runner: once it is gone (`launcher_gone`), the rank stops as if it had been signalled.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import psutil

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# EX_TEMPFAIL of sysexits.h: "a temporary failure; the user is invited to retry"
PREEMPTED_EXIT = 75


class Preempted(RuntimeError):
    """Raised on every rank after a stop signal, once the checkpoint of the current step is complete."""


class StopRequest:
    """While entered, SIGTERM and SIGUSR1 set `signal` instead of ending the process; the previous handlers come back
    on exit. Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self) -> None:
        self.signal: signal.Signals | None = None
        self._previous: dict[int, Any] = {}
        self._runner = deepspeed_runner()

    @property
    def requested(self) -> bool:
        """A stop signal arrived, or the `deepspeed` runner that started this rank is gone."""
        return self.signal is not None or self.launcher_gone

    @property
    def launcher_gone(self) -> bool:
        if self._runner is None:
            return False
        launch, runner = self._runner
        try:
            return launch.ppid() != runner  # reparented: the runner died
        except psutil.Error:
            return True

    @property
    def why(self) -> str:
        if self.signal is not None:
            return self.signal.name
        return "the deepspeed command ended" if self.launcher_gone else "a stop signal on another rank"

    def __enter__(self) -> StopRequest:
        try:
            self._previous = {sig: signal.signal(sig, self._record) for sig in STOP_SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        for sig in self._previous:  # system calls in C++ (torch.save, gloo) restart instead of failing with EINTR
            signal.siginterrupt(sig, False)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum)


def deepspeed_runner() -> tuple[psutil.Process, int] | None:
    """(this rank's `deepspeed.launcher.launch` parent, the PID of the `deepspeed` runner that started it), when this
    rank was started by the `deepspeed` command on this node; None otherwise (torchrun, srun, a single process)."""
    try:
        launch = psutil.Process().parent()
        if launch is None or "deepspeed.launcher.launch" not in launch.cmdline():
            return None
        runner = launch.parent()
        if runner is None or not any(arg.rsplit("/", 1)[-1] in ("deepspeed", "ds") for arg in runner.cmdline()[:2]):
            return None
        return launch, runner.pid
    except psutil.Error:
        return None


def ignore_stop_signals(*_: object) -> None:
    """For helper processes (DataLoader workers): the rank decides when to stop, a worker must outlive the signal
    so that the current step can finish."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
