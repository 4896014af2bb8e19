"""Measured latency of a network's forward pass, recorded with the device and method that gave it.

CPU: the thread count is fixed for the measurement (``threads``), each forward is timed with
``time.perf_counter``. CUDA: after warm-up, each forward is bracketed by a pair of
``torch.cuda.Event(enable_timing=True)`` with the stream synchronised before it, so a measurement
is the latency of one request, not the throughput of a queue. Both report the median of
``repeats`` forwards, in seconds, in eval mode under ``torch.inference_mode``.

For input-dependent (gated) networks pass several batches: they are cycled through and the median
is taken over the different inputs.

Example::

    >>> latency = measure_latency(model, torch.randn(1, 3, 224, 224), threads=4)
    >>> latency.seconds, latency.device
    (0.0123, 'cpu AMD EPYC 7763 (4 threads)')
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nas.budget import format_seconds
from supernet.io.provenance import cpu_name

__all__ = ["Latency", "cuda_available", "measure_latency"]


@dataclass(frozen=True)
class Latency:
    """One latency measurement and what produced it.

    Attributes:
        seconds: median forward time over ``repeats`` forwards, in seconds.
        device: where it ran, e.g. ``"cpu AMD EPYC 7763 (2 threads)"`` or ``"cuda:0 NVIDIA H100"``.
        batch_size: images per forward.
        repeats: number of timed forwards the median is over.
        method: ``"perf_counter"`` (CPU) or ``"cuda_events"`` (CUDA).
    """

    seconds: float
    device: str
    batch_size: int
    repeats: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all fields."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{format_seconds(self.seconds)} (median of {self.repeats}, batch {self.batch_size}, "
            f"{self.device}, {self.method})"
        )


def cuda_available() -> bool:
    """Whether a CUDA device can be used for measurement."""
    return torch.cuda.is_available()


def _as_batches(inputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    batches = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
    if not batches:
        raise ValueError("inputs is an empty sequence; pass one batch tensor or a non-empty list of them")
    for batch in batches:
        if not isinstance(batch, torch.Tensor) or batch.dim() == 0:
            raise ValueError(
                f"inputs must be tensors with a leading batch dimension, got {type(batch).__name__}"
            )
    sizes = sorted({batch.shape[0] for batch in batches})
    if len(sizes) > 1:
        raise ValueError(f"all input batches must share one batch size (it is reported), got sizes {sizes}")
    return batches


def measure_latency(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
) -> Latency:
    """Median forward latency of ``model`` on ``device``.

    The model is moved to ``device`` (and stays there) and run in eval mode; its training flag is
    restored afterwards. The global torch thread count is set to ``threads`` for the measurement
    and restored afterwards.

    Args:
        model: the network to time.
        inputs: one batch ``(N, C, H, W)``, or several batches of the same ``N`` cycled through
            (for gated networks, whose cost depends on the input).
        device: ``"cpu"`` or a CUDA device.
        warmup: untimed forwards first (allocator, cuDNN autotuning, caches).
        repeats: timed forwards; the median is reported.
        threads: CPU threads to use (``torch.set_num_threads``); ``None`` keeps the current value.

    Raises:
        ValueError: bad counts, empty or mixed-size inputs, or CUDA asked for but unavailable.
    """
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1 or None")
    target = torch.device(device)
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(target)!r} is not supported; use 'cpu' or 'cuda[:index]'")
    if target.type == "cuda" and not cuda_available():
        raise ValueError(f"device {str(target)!r} was asked for but CUDA is not available; use device='cpu'")

    batches = [batch.to(target) for batch in _as_batches(inputs)]
    was_training = model.training
    previous_threads = torch.get_num_threads()
    model.to(target).eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            for i in range(warmup):
                model(batches[i % len(batches)])
            if target.type == "cuda":
                times = _time_cuda(model, batches, repeats, target)
                index = target.index if target.index is not None else torch.cuda.current_device()
                name = f"cuda:{index} {torch.cuda.get_device_name(index)}"
                method = "cuda_events"
            else:
                times = _time_cpu(model, batches, repeats)
                n = torch.get_num_threads()
                name = f"cpu {cpu_name()} ({n} thread{'s' if n != 1 else ''})"
                method = "perf_counter"
    finally:
        torch.set_num_threads(previous_threads)
        model.train(was_training)
    return Latency(
        seconds=statistics.median(times),
        device=name,
        batch_size=int(batches[0].shape[0]),
        repeats=repeats,
        method=method,
    )


def _time_cpu(model: nn.Module, batches: list[torch.Tensor], repeats: int) -> list[float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        model(batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    return times


def _time_cuda(
    model: nn.Module, batches: list[torch.Tensor], repeats: int, device: torch.device
) -> list[float]:
    times = []
    with torch.cuda.device(device):
        for i in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            # Drain the queue first so the pair times this forward alone, launch overhead included.
            torch.cuda.synchronize()
            start.record()
            model(batches[i % len(batches)])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)  # elapsed_time is in milliseconds
    return times
