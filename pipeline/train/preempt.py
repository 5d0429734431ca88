"""Stop at an optimizer-step boundary when the cluster asks (SIGTERM, SIGUSR1), with a checkpoint to come back to.

A signal handler only records the request. Before each step's first forward the loop sums the flags of all ranks in
one all-reduce (`loop.go_on_or_stop`, which also carries a rank whose data ran dry), so every rank learns of the
request at the same step, no rank enters a collective alone, and they all save one complete checkpoint of the last
finished step and leave with `PREEMPTED_EXIT`.
`launch/slurm/train.sbatch` turns that status into `scontrol requeue`; the requeued job resumes with `resume=auto`.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

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


def ignore_stop_signals(*_: object) -> None:
    """For helper processes (DataLoader workers): the rank decides when to stop, a worker must outlive the signal
    so that the current step can finish."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
