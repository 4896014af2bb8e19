"""How a latency table times one of its entries: torch on CPU or CUDA, or onnxruntime on the CPU."""

from __future__ import annotations

import io
import statistics
import time
import warnings
from typing import Literal, Protocol

import torch
from torch import nn

from nas.latency.measure import measure_latency
from search_spaces import UserError
from supernet.io.provenance import cpu_name

__all__ = ["BACKENDS", "OnnxRuntimeTimer", "Timer", "TorchTimer", "make_timer"]

Backend = Literal["cpu", "cuda", "onnxruntime"]
BACKENDS: tuple[str, ...] = ("cpu", "cuda", "onnxruntime")
ONNX_INSTALL = 'pip install "slimnas[onnx]"'


class Timer(Protocol):
    """Times one module on one backend: the median of ``repeats`` forwards after ``warmup``, in seconds."""

    backend: str
    device: str  # e.g. "cpu AMD EPYC 7763 (1 thread)"; known after the first call
    runtime_version: str | None  # onnxruntime's version, when it is the backend

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float: ...


class TorchTimer:
    """:func:`nas.latency.measure.measure_latency`: perf_counter with fixed threads on CPU, CUDA events on GPU."""

    runtime_version = None

    def __init__(self, *, backend: str, warmup: int, repeats: int, threads: int | None) -> None:
        self.backend = backend
        self.warmup, self.repeats = warmup, repeats
        self.threads = threads if backend == "cpu" else None
        self.device = backend

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        latency = measure_latency(module, inputs, device=self.backend, warmup=self.warmup, repeats=self.repeats,
                                  threads=self.threads)
        self.device = latency.device
        return latency.seconds


class OnnxRuntimeTimer:
    """Exports the module with ``torch.onnx`` and times an ``onnxruntime.InferenceSession`` (CPU provider,
    ``intra_op_num_threads`` fixed, one inter-op thread) with perf_counter."""

    def __init__(self, *, warmup: int, repeats: int, threads: int) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f"--device onnxruntime: onnxruntime is not installed; {ONNX_INSTALL}") from None
        self.backend = "onnxruntime"
        self.warmup, self.repeats, self.threads = warmup, repeats, threads
        self._runtime = onnxruntime
        self.runtime_version = onnxruntime.__version__
        self.device = (f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, cpu {cpu_name()} "
                       f"({threads} thread{'s' if threads != 1 else ''})")

    def __call__(self, module: nn.Module, inputs: torch.Tensor) -> float:
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter: about 20x faster per module than the dynamo one, and a table exports thousands
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), (inputs,), buffer, dynamo=False, input_names=["x"])
        options = self._runtime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        session = self._runtime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: inputs.numpy()}
        for _ in range(self.warmup):
            session.run(None, feed)
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def make_timer(backend: str, *, warmup: int, repeats: int, threads: int) -> Timer:
    """The timer of ``backend`` (one of :data:`BACKENDS`); a one-line :class:`UserError` otherwise."""
    if backend == "onnxruntime":
        return OnnxRuntimeTimer(warmup=warmup, repeats=repeats, threads=threads)
    if backend == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; build the table on the GPU machine")
    if backend not in BACKENDS:
        raise UserError(f"--device: {backend!r} is not a backend; expected one of {', '.join(BACKENDS)}")
    return TorchTimer(backend=backend, warmup=warmup, repeats=repeats, threads=threads)
