"""How a latency table times one of its entries: :func:`nas.latency.measure.measure_latency` on the table's
device, runtime and precision (``eager`` on CPU or CUDA, ``graph`` on CUDA, ``onnxruntime`` on the CPU).

Runtimes that compile (``compiled``, ``tensorrt``) are refused for tables: a table times thousands of
modules, and compiling each would take hours; time such networks whole (a search without a table).
"""

from __future__ import annotations

import torch
from torch import nn

from nas.latency.measure import measure_latency
from nas.latency.runtimes import LatencyRuntimeError, resolve_runtime, runtime_versions

__all__ = ["DEVICES", "TABLE_RUNTIMES", "RuntimeTimer", "make_timer", "table_runtime"]

DEVICES: tuple[str, ...] = ("cpu", "cuda")
TABLE_RUNTIMES: tuple[str, ...] = ("eager", "graph", "onnxruntime")


class RuntimeTimer:
    """Times one module: the median of ``repeats`` forwards after ``warmup``, in seconds.

    ``device`` describes the machine once something was timed (e.g. ``"cpu AMD EPYC 7763 (1 thread)"``);
    ``versions`` are those of the runtime that produced the figures.
    """

    def __init__(self, *, device: str, runtime: str, dtype: str, warmup: int, repeats: int, threads: int | None) -> None:
        self.device_type, self.runtime, self.dtype = device, runtime, dtype
        self.warmup, self.repeats = warmup, repeats
        self.threads = threads if device == "cpu" else None
        self.device = device
        self.versions = runtime_versions(runtime, device)

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        latency = measure_latency(module, inputs, device=self.device_type, warmup=self.warmup, repeats=self.repeats,
                                  threads=self.threads, runtime=self.runtime, dtype=self.dtype)
        self.device = latency.device
        return latency.seconds


def table_runtime(device: str, runtime: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """``(runtime, dtype)`` a table on ``device`` is timed with (``auto`` resolved as the search resolves it); a
    one-line :class:`nas.latency.runtimes.LatencyRuntimeError` naming ``--device``, ``--runtime`` or ``--dtype``
    for a choice a table cannot use. The device need not be present (``--count`` works anywhere)."""
    if device == "onnxruntime":
        raise LatencyRuntimeError("--device: onnxruntime is a runtime, not a device; use --device cpu --runtime onnxruntime")
    if device not in DEVICES:
        raise LatencyRuntimeError(f"--device: {device!r} is not a device; expected one of {', '.join(DEVICES)}")
    runtime, dtype = resolve_runtime(runtime, dtype, device=device, runtime_key="--runtime", dtype_key="--dtype")
    if runtime not in TABLE_RUNTIMES:
        usable = [name for name in TABLE_RUNTIMES if name != "graph" or device == "cuda"]
        raise LatencyRuntimeError(f"--runtime: {runtime} compiles every module it times, and a table times thousands; "
                                  f"use {' or '.join(usable)}, or search without a table (whole networks timed)")
    return runtime, dtype


def make_timer(device: str, *, runtime: str = "auto", dtype: str = "auto", warmup: int, repeats: int,
               threads: int | None) -> RuntimeTimer:
    """The timer of a table on ``device`` (cpu or cuda), ``runtime`` and ``dtype`` (:func:`table_runtime`)."""
    runtime, dtype = table_runtime(device, runtime, dtype)
    if device == "cuda" and not torch.cuda.is_available():
        raise LatencyRuntimeError("--device cuda: no CUDA device is available here; build the table on the GPU machine")
    return RuntimeTimer(device=device, runtime=runtime, dtype=dtype, warmup=warmup, repeats=repeats, threads=threads)
