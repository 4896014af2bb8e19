"""A network made ready to run on one runtime at one input shape: what :mod:`nas.latency.measure` times.

Every program holds its inputs and splits a request in two: :meth:`Program.load` makes input ``i`` the
next one (outside the timed region: copying into a captured graph's static buffer, binding an
onnxruntime value) and :meth:`Program.run` runs one forward of it (asynchronous on CUDA; the timer
synchronises). Building a program (:func:`prepare_program`) pays every one-time cost before timing:
compiling, capturing, exporting, building an engine.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn

from nas.latency.runtimes import ONNX_INSTALL, TENSORRT_INSTALL, LatencyRuntimeError, as_torch_dtype
from search_spaces import first_line
from supernet.nn.blocks import GatedBlock

__all__ = ["CAPTURE_WARMUP", "CompiledProgram", "CudaGraphProgram", "EagerProgram", "OnnxRuntimeProgram", "Program",
           "RoutedProgram", "TensorRTProgram", "prepare_program"]

CAPTURE_WARMUP = 3  # forwards on the capture stream before a CUDA graph is captured (cuDNN plans, allocator)
INPUT_NAME, OUTPUT_NAME = "images", "features"


class Program(Protocol):
    """One network on one runtime; ``timing`` says how a forward is timed (``perf_counter`` or ``cuda_events``)."""

    timing: str

    def load(self, index: int) -> None: ...

    def run(self) -> None: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The output for ``x`` (of a shape the program was built for): how a routed network's pieces are chained."""
        ...

    def result(self) -> torch.Tensor:
        """The output of the last :meth:`run` (untimed; for checks)."""
        ...

    def close(self) -> None: ...


class EagerProgram:
    """The network called op by op (PyTorch eager)."""

    def __init__(self, network: nn.Module, inputs: Sequence[torch.Tensor], *, timing: str) -> None:
        self.network, self.inputs, self.timing = network, list(inputs), timing
        self.current = self.inputs[0]
        self.output: torch.Tensor | None = None

    def load(self, index: int) -> None:
        self.current = self.inputs[index % len(self.inputs)]

    def run(self) -> None:
        self.output = self.network(self.current)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def result(self) -> torch.Tensor:
        assert self.output is not None, "run() first"
        return self.output

    def close(self) -> None:
        self.network = self.current = self.output = None  # type: ignore[assignment]
        self.inputs = []


class CompiledProgram(EagerProgram):
    """``torch.compile`` of the network (Inductor, static shapes, one graph), compiled by a first call here.

    Dynamo's caches are reset first: every candidate is a new module of the same class, and after
    ``recompile_limit`` of them (8) Dynamo would silently run the rest eagerly.
    """

    def __init__(self, network: nn.Module, inputs: Sequence[torch.Tensor], *, timing: str) -> None:
        torch._dynamo.reset()
        compiled = torch.compile(network, dynamic=False, fullgraph=True)
        super().__init__(compiled, inputs, timing=timing)
        try:
            with _quiet():
                self.run()
        except Exception as error:  # noqa: BLE001 - Dynamo and Inductor raise many kinds; the user sees one line
            raise LatencyRuntimeError(f"latency.runtime: torch.compile could not compile this network "
                                      f"({first_line(error, limit=160)}); use latency.runtime=eager") from None

    def close(self) -> None:
        super().close()
        torch._dynamo.reset()


class CudaGraphProgram:
    """The network captured in a ``torch.cuda.CUDAGraph`` and replayed from a static input buffer.

    As ``torch.cuda.graphs`` asks: :data:`CAPTURE_WARMUP` forwards run first on a side stream (cuDNN
    picks and caches its kernels, the allocator fills its pool, lazily loaded kernels load: none of which
    may happen during capture), then the capture runs on that same stream. :meth:`load` copies an input
    into the static buffer; :meth:`run` replays the captured kernels with no Python in between.
    """

    timing = "cuda_events"

    def __init__(self, network: nn.Module, inputs: Sequence[torch.Tensor]) -> None:
        self.inputs = list(inputs)
        device = self.inputs[0].device
        self.static_input = self.inputs[0].clone()  # keeps the inputs' memory format
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(CAPTURE_WARMUP):
                network(self.static_input)
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph, stream=stream):
                self.static_output = network(self.static_input)
        except RuntimeError as error:
            raise LatencyRuntimeError(f"latency.runtime: graph could not capture this network ({first_line(error, limit=160)}); "
                                      "a network that synchronises with the host (gathered gates) cannot be captured; "
                                      "use latency.runtime=eager") from None
        torch.cuda.synchronize(device)

    def load(self, index: int) -> None:
        self.static_input.copy_(self.inputs[index % len(self.inputs)])

    def run(self) -> None:
        self.graph.replay()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output

    def result(self) -> torch.Tensor:
        return self.static_output

    def close(self) -> None:
        self.graph = self.static_input = self.static_output = None  # type: ignore[assignment]
        self.inputs = []


class OnnxRuntimeProgram:
    """The network exported to ONNX (TorchScript exporter, this batch size) in an onnxruntime ``InferenceSession``.

    Session: ``CPUExecutionProvider``, every graph optimisation, sequential execution, ``threads`` intra-op
    threads and one inter-op thread. Inputs are turned into ``OrtValue`` once and bound with IO binding, so
    a timed run is ``run_with_iobinding`` alone (no numpy conversion).
    """

    timing = "perf_counter"

    def __init__(self, network: nn.Module, inputs: Sequence[torch.Tensor], *, threads: int | None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise LatencyRuntimeError(f"latency.runtime: onnxruntime is not installed; {ONNX_INSTALL}") from None
        buffer = io.BytesIO()
        # the exporter traces with autograd off and ordinary tensors (not inference-mode ones)
        with torch.inference_mode(False), torch.no_grad(), _quiet():
            example = inputs[0].clone()
            torch.onnx.export(network, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.values = [onnxruntime.OrtValue.ortvalue_from_numpy(x.detach().cpu().contiguous().numpy()) for x in inputs]
        self.binding = self.session.io_binding()
        self.binding.bind_output(OUTPUT_NAME)

    def load(self, index: int) -> None:
        self.binding.bind_ortvalue_input(INPUT_NAME, self.values[index % len(self.values)])

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().contiguous().numpy()})[0])

    def result(self) -> torch.Tensor:
        return torch.from_numpy(self.binding.copy_outputs_to_cpu()[0])

    def close(self) -> None:
        self.session = self.binding = None  # type: ignore[assignment]
        self.values = []


class TensorRTProgram(EagerProgram):
    """``torch_tensorrt.compile`` of the network (dynamo front end, static shape, ``dtype`` enabled)."""

    def __init__(self, network: nn.Module, inputs: Sequence[torch.Tensor], *, dtype: str) -> None:
        try:
            import torch_tensorrt
        except ImportError:
            raise LatencyRuntimeError(f"latency.runtime: tensorrt needs torch_tensorrt, which is not installed; "
                                      f"{TENSORRT_INSTALL} (or use latency.runtime=graph)") from None
        try:
            with torch.inference_mode(False), torch.no_grad(), _quiet():
                example = inputs[0].clone()
                engine = torch_tensorrt.compile(network, ir="dynamo", inputs=[example],
                                                enabled_precisions={as_torch_dtype(dtype)}, min_block_size=1)
        except Exception as error:  # noqa: BLE001 - conversion failures come in many kinds
            raise LatencyRuntimeError(f"latency.runtime: torch_tensorrt could not build an engine for this network "
                                      f"({first_line(error, limit=160)}); use latency.runtime=graph") from None
        super().__init__(engine, inputs, timing="cuda_events")


class RoutedProgram:
    """A routed network (:class:`supernet.nn.routing.RoutedNetwork`) on a runtime that runs fixed programs: one
    program per piece (the prefix, each router, each branch) and per input shape it meets, chained by the
    routers' decisions on the host, as the routed network chains them (one program per route piece plus the
    routers: a captured graph or an exported model cannot follow a data-dependent route). Built for the
    shapes the given inputs' routes need, so nothing is compiled, captured or exported while timed.
    """

    def __init__(self, network: nn.Module, inputs: Sequence[torch.Tensor], *, runtime: str, dtype: str,
                 threads: int | None) -> None:
        self.network, self.inputs = network, list(inputs)
        self.timing = "cuda_events" if self.inputs[0].device.type == "cuda" else "perf_counter"
        self.current, self.output = self.inputs[0], None
        self.programs: dict[tuple[str, tuple[int, ...]], Program] = {}
        build = lambda piece, example: prepare_program(piece, [example], runtime=runtime, dtype=dtype,  # noqa: E731
                                                       threads=threads)
        for x in self.inputs:  # every (piece, shape) these inputs' routes meet, built now
            self._chain(x, lambda key, piece, example: self.programs.get((key, tuple(example.shape)))
                        or self.programs.setdefault((key, tuple(example.shape)), build(piece, example)))

    def _chain(self, x: torch.Tensor, program_of: Callable[[str, nn.Module, torch.Tensor], Program]) -> torch.Tensor:
        network = self.network
        return network.run_pieces(x, lambda key, piece, example: program_of(key, piece, example)(example))

    def load(self, index: int) -> None:
        self.current = self.inputs[index % len(self.inputs)]

    def run(self) -> None:
        self.output = self._chain(self.current, lambda key, piece, example: self.programs[(key, tuple(example.shape))])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._chain(x, lambda key, piece, example: self.programs[(key, tuple(example.shape))])

    def result(self) -> torch.Tensor:
        assert self.output is not None, "run() first"
        return self.output

    def close(self) -> None:
        for program in self.programs.values():
            program.close()
        self.programs, self.inputs, self.network = {}, [], None  # type: ignore[assignment]


def prepare_program(network: nn.Module, inputs: Sequence[torch.Tensor], *, runtime: str, dtype: str,
                    threads: int | None) -> Program:
    """``network`` (already on the inputs' device, in ``dtype``, eval mode) as a :class:`Program` of ``runtime``.

    A network whose gated blocks run gathered is refused by every runtime but ``eager`` (a caller bug:
    see :func:`nas.latency.runtimes.gate_mode`). A routed network runs eager as it is, on any other runtime as a
    :class:`RoutedProgram`.
    """
    if runtime != "eager" and hasattr(network, "run_pieces"):
        return RoutedProgram(network, inputs, runtime=runtime, dtype=dtype, threads=threads)
    if runtime != "eager" and _gathered(network):
        raise ValueError(f"runtime {runtime}: gated blocks must run masked (set_gate_mode('masked')); "
                         "only eager runs them gathered")
    timing = "cuda_events" if inputs[0].device.type == "cuda" else "perf_counter"
    if runtime == "eager":
        return EagerProgram(network, inputs, timing=timing)
    if runtime == "compiled":
        return CompiledProgram(network, inputs, timing=timing)
    if runtime == "graph":
        if inputs[0].device.type != "cuda":
            raise LatencyRuntimeError("latency.runtime: graph captures CUDA graphs and needs a CUDA device; on cpu use "
                                      "eager, compiled or onnxruntime")
        return CudaGraphProgram(network, inputs)
    if runtime == "onnxruntime":
        return OnnxRuntimeProgram(network, inputs, threads=threads)
    if runtime == "tensorrt":
        return TensorRTProgram(network, inputs, dtype=dtype)
    raise LatencyRuntimeError(f"latency.runtime: {runtime!r} is not a runtime")


def _gathered(network: nn.Module) -> bool:
    return any(isinstance(m, GatedBlock) and m.gate_active and m.gather for m in network.modules())


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Compilers and exporters talk (warnings, log records); a latency measurement prints nothing."""
    names = ("torch._dynamo", "torch._inductor", "torch.onnx", "torch.utils.cpp_extension", "torch_tensorrt")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)

