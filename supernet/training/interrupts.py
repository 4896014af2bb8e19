"""Stopping a run cleanly on Ctrl-C or SIGTERM: finish the current step, write a checkpoint, say so, exit.

A scheduler preempts a job with SIGTERM (then, after a grace period, SIGKILL); Ctrl-C sends SIGINT.
While :class:`StopSignals` is active the first of either only sets a flag, which the training loop
reads between steps (a Python attribute: no device sync). A second signal of the same kind gets the
previous handler back, so pressing Ctrl-C twice quits at once. Data-parallel ranks agree on when to
stop at their next common sync point (every ``log_every_steps``, checkpoint and epoch end), so all of
them stop after the same step and write one checkpoint together.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

from supernet.cli import Interrupted
from supernet.training.distributed import DistEnv

__all__ = ["StopSignals", "stop_agreed"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Within ``with StopSignals() as signals:``, ``signals.received`` is the first SIGINT/SIGTERM's number (or
    None). Outside the main thread (where Python cannot install handlers) it never receives anything."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = number
        signal.signal(number, self._previous[number])  # a second one acts at once

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def interrupted(self, *, step: int, total_steps: int, checkpoint: str, announce: bool) -> Interrupted:
        """The exception that ends the command after the checkpoint was written (exit code 128 + signal)."""
        number = self.received if self.received is not None else signal.SIGINT
        name = signal.Signals(number).name
        message = (f"stopped by {name} after step {step}/{total_steps}: checkpoint written to {checkpoint}; "
                   "resume=true continues from it") if announce else ""
        return Interrupted(message, exit_code=128 + number)


def stop_agreed(signals: StopSignals, dist: DistEnv, device: torch.device, *, sync_point: bool) -> bool:
    """Whether the run stops after this step: one process stops at once; data-parallel ranks only at a sync
    point, where any rank's signal stops them all (an all-reduce of a flag; off sync points no rank waits)."""
    if not dist.enabled:
        return signals.received is not None
    if not sync_point:
        return False
    flag = torch.tensor([0 if signals.received is None else signals.received], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    agreed = int(flag.item())
    if agreed and signals.received is None:
        signals.received = agreed  # the exit code follows the signal another rank got
    return bool(agreed)
