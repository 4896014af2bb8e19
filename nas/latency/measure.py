"""Measured latency of a network's forward pass on a runtime, recorded with everything that produced it.

The network is first made into the program it would be deployed as (:mod:`nas.latency.runtimes`:
``eager``, ``compiled``, ``graph``, ``onnxruntime``, ``tensorrt``, in ``float32``, ``bfloat16`` or
``float16``; :mod:`nas.latency.programs`), paying compilation, capture or export before anything is
timed. Then it is warmed up for at least ``warmup`` forwards *and* ``warmup_seconds`` of wall time, and
``repeats`` forwards are timed one at a time, more while less than ``timed_seconds`` of wall time has
passed (a fast network gets more repeats: its noise is a larger share of the gaps between networks). CPU:
the thread count is fixed (``threads``) and each forward is timed with ``time.perf_counter``. CUDA: the
first measurement of a process first keeps the GPU busy for :data:`DEVICE_WARMUP_SECONDS` (clocks ramp up
from idle, lazily loaded kernels load), and each forward is bracketed by a pair of
``torch.cuda.Event(enable_timing=True)`` with the device synchronised before it, so a figure is the
latency of one request, not the throughput of a queue. The median is reported, in seconds, in eval mode
under ``torch.inference_mode``.

Why time as well as count the warm-up: a count of 5 forwards of a small network at batch 1 is a
few milliseconds, too short for a machine coming out of idle (or out of a different network's
work) to settle, so the first network timed in a process measured slower than it is (issue 18: the
smallest sub-network, timed first by the budget check, came out slower than the full one).
:func:`measure_latencies` (one runtime) and :func:`measure_variants` (each network on its own runtime and
precision) time several networks interleaved, round by round in rotating order, so whatever the
machine does during the measurement reaches them all alike.

For input-dependent (gated, routed) networks pass several batches: they are cycled through, and the
figure is the mean over the inputs of each input's median, the expected cost of serving them (a median
over inputs would price a routed network at its cheap route when most inputs take it, whatever the rest
cost).

Anchored timing (``anchor``): every round also times a fixed reference network, the *anchor*, beside the
networks, and a network's figure is the median over rounds of its time divided by the anchor's in the same
round, times ``anchor_seconds`` (the anchor's latency measured once, at the start of a study, by
:func:`anchor_latency`). Whatever slows the machine during a measurement (other processes, clock changes
of a shared virtual CPU) slows the anchor alike and cancels, so networks timed minutes apart compare: on
this project's 2-core machines two timings of the same 30 ResNet-18 networks one after the other ordered
them at Kendall tau 0.29 by plain medians and 0.85 anchored, under load (benchmarks/RESULTS.md §18).

Example::

    >>> latency = measure_latency(model, torch.randn(1, 3, 224, 224), threads=4)
    >>> latency.seconds, latency.device, latency.runtime
    (0.0123, 'cpu AMD EPYC 7763 (4 threads)', 'eager')
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nas.budget import format_seconds
from nas.latency.programs import Program, prepare_program
from nas.latency.runtimes import as_torch_dtype, memory_format, resolve_runtime, runtime_network, runtime_versions
from supernet.io.provenance import cpu_name
from supernet.nn.blocks import GatedBlock

__all__ = ["DEVICE_WARMUP_SECONDS", "Anchor", "Latency", "anchor_latency", "cuda_available", "device_name",
           "measure_latencies", "measure_latency", "measure_variants"]

DEVICE_WARMUP_SECONDS = 1.0  # CUDA: busy time before the first measurement of a process
clock = time.perf_counter  # the host clock every CPU figure is read from (tests simulate a machine through it)
_warmed: set[str] = set()


@dataclass(frozen=True)
class Latency:
    """One latency measurement and what produced it.

    Attributes:
        seconds: median forward time over ``repeats`` forwards, in seconds.
        device: where it ran, e.g. ``"cpu AMD EPYC 7763 (2 threads)"`` or ``"cuda:0 NVIDIA H200"``.
        batch_size: images per forward.
        repeats: number of timed forwards the median is over.
        method: ``"perf_counter"`` or ``"cuda_events"``.
        runtime: what ran (:data:`nas.latency.runtimes.RUNTIMES`).
        dtype: the precision of the network and its inputs.
        gate_mode: ``"gathered"`` or ``"masked"`` for a gated network, None for a static one.
        warmup: untimed forwards run first (at least the asked count, more to fill ``warmup_seconds``).
        prepare_seconds: compiling, capturing or exporting the program before any forward ran.
        versions: torch, Python and the runtime's own (CUDA, cuDNN, onnxruntime, torch_tensorrt).
        anchor: what the figure is relative to (anchored timing), or None.
        anchor_seconds: the anchor's latency the ratio is scaled by, or None.
        ratio: the median of this network's time over the anchor's in the same rounds, or None.
    """

    seconds: float
    device: str
    batch_size: int
    repeats: int
    method: str
    runtime: str = "eager"
    dtype: str = "float32"
    gate_mode: str | None = None
    warmup: int = 0
    prepare_seconds: float = 0.0
    versions: dict[str, str | None] = field(default_factory=dict)
    anchor: str | None = None
    anchor_seconds: float | None = None
    ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of all fields."""
        return asdict(self)

    def __str__(self) -> str:
        gates = f", gates {self.gate_mode}" if self.gate_mode else ""
        return (f"{format_seconds(self.seconds)} (median of {self.repeats}, batch {self.batch_size}, {self.runtime} "
                f"{self.dtype}{gates}, {self.device}, {self.method})")


def cuda_available() -> bool:
    """Whether a CUDA device can be used for measurement."""
    return torch.cuda.is_available()


def device_name(device: torch.device) -> str:
    """``"cpu <model> (N threads)"`` with torch's current thread count, or ``"cuda:<i> <GPU name>"``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    n = torch.get_num_threads()
    return f"cpu {cpu_name()} ({n} thread{'s' if n != 1 else ''})"


def _warm_device(device: torch.device, seconds: float = DEVICE_WARMUP_SECONDS) -> None:
    """Keep a CUDA device busy for ``seconds`` with half-precision matrix products, once per process and device.

    An idle GPU runs at low clocks and loads kernels lazily; the first network timed would pay for both.
    Nothing is done on the CPU (its caches and oneDNN kernels are warmed by each network's own warm-up).
    """
    if device.type != "cuda" or str(device) in _warmed:
        return
    with torch.cuda.device(device):
        a = torch.randn(2048, 2048, device=device, dtype=torch.float16)
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for _ in range(8):
                a = torch.tanh(a @ a)
            torch.cuda.synchronize(device)
    _warmed.add(str(device))


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
    runtime: str = "eager",
    dtype: str = "float32",
    warmup_seconds: float = 0.0,
    timed_seconds: float = 0.0,
) -> Latency:
    """Median forward latency of ``model`` on ``device`` and ``runtime`` (:func:`measure_latencies` of one model).

    The model is moved to ``device`` (and stays there) and run in eval mode; its training flag is
    restored afterwards. In another precision or layout than float32 NCHW a cast copy is timed and
    ``model`` is left as it was. The global torch thread count is set to ``threads`` for the
    measurement and restored afterwards.

    Args:
        model: the network to time.
        inputs: one batch ``(N, C, H, W)``, or several batches of the same ``N`` cycled through
            (for gated networks, whose cost depends on the input).
        device: ``"cpu"`` or a CUDA device.
        warmup: untimed forwards first, at least (allocator, cuDNN plans, caches).
        repeats: timed forwards, at least; the median is reported.
        threads: CPU threads to use (``torch.set_num_threads``, onnxruntime's intra-op threads); ``None`` keeps
            torch's current value.
        runtime: ``eager``, ``compiled``, ``graph``, ``onnxruntime`` or ``tensorrt`` (or ``auto``).
        dtype: ``float32``, ``bfloat16`` or ``float16`` (or ``auto``).
        warmup_seconds: keep warming up until this much wall time has passed, whatever ``warmup`` says.
        timed_seconds: keep timing forwards until this much wall time has passed, whatever ``repeats`` says.

    Raises:
        ValueError: bad counts, empty or mixed-size inputs, or CUDA asked for but unavailable.
        LatencyRuntimeError: a runtime or precision this device cannot run (one line).
    """
    return measure_latencies([model], inputs, device=device, warmup=warmup, repeats=repeats, threads=threads,
                             runtime=runtime, dtype=dtype, warmup_seconds=warmup_seconds, timed_seconds=timed_seconds)[0]


def measure_latencies(
    models: Sequence[nn.Module],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
    runtime: str = "eager",
    dtype: str = "float32",
    warmup_seconds: float = 0.0,
    warm_device: bool = True,
    anchor: Anchor | None = None,
    timed_seconds: float = 0.0,
) -> list[Latency]:
    """:func:`measure_latency` of several models on the same inputs and runtime, timed interleaved
    (:func:`measure_variants`), relative to ``anchor`` if given. Returns one :class:`Latency` per model, in order."""
    return measure_variants([(model, runtime, dtype) for model in models], inputs, device=device, warmup=warmup,
                            repeats=repeats, threads=threads, warmup_seconds=warmup_seconds, warm_device=warm_device,
                            anchor=anchor, timed_seconds=timed_seconds)


def measure_variants(
    variants: Sequence[tuple[nn.Module, str, str]],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
    warmup_seconds: float = 0.0,
    warm_device: bool = True,
    anchor: Anchor | None = None,
    timed_seconds: float = 0.0,
) -> list[Latency]:
    """Several ``(model, runtime, dtype)`` timed side by side on the same inputs.

    Every variant is prepared (compiled, captured, exported) and warmed up, in turn; then each of ``repeats``
    rounds (and more, until the rounds have taken ``timed_seconds``) times one forward of every variant, in an
    order that rotates from round to round, so no variant is timed only while the machine is in one state.
    ``warm_device=False`` skips the once-per-process device warm-up (to reproduce a cold measurement). With
    ``anchor`` (all variants on one runtime and precision) the anchor's network takes part in every round and
    each figure is relative to it (anchored timing, above); input-dependent networks then run at least
    :data:`ROUNDS_PER_INPUT` rounds per input. Returns one :class:`Latency` per variant, in order.
    """
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be >= 0")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")
    if warmup_seconds < 0:
        raise ValueError(f"warmup_seconds={warmup_seconds} must be >= 0")
    if timed_seconds < 0:
        raise ValueError(f"timed_seconds={timed_seconds} must be >= 0")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be >= 1 or None")
    if not variants:
        raise ValueError("variants is empty; pass at least one network")
    target = torch.device(device)
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(target)!r} is not supported; use 'cpu' or 'cuda[:index]'")
    if target.type == "cuda" and not cuda_available():
        raise ValueError(f"device {str(target)!r} was asked for but CUDA is not available; use device='cpu'")
    resolved = [resolve_runtime(runtime, dtype, device=target) for _, runtime, dtype in variants]
    if anchor is not None and len(set(resolved)) > 1:
        raise ValueError("anchored timing compares networks on one runtime and precision; got several")
    raw = _as_batches(inputs)
    dependent = [_input_dependent(model) for model, _, _ in variants]
    rounds = repeats
    if anchor is not None and any(dependent) and len(raw) > 1:
        rounds = max(repeats, ROUNDS_PER_INPUT * len(raw))
    was_training = [model.training for model, _, _ in variants]
    previous_threads = torch.get_num_threads()
    programs: list[Program] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if warm_device:
            _warm_device(target)
        on_device = torch.cuda.device(target) if target.type == "cuda" else contextlib.nullcontext()
        with on_device:
            prepared = []
            for (model, _, _), (runtime, dtype) in zip(variants, resolved):
                batches = [batch.to(target, as_torch_dtype(dtype)).contiguous(memory_format=memory_format(target, dtype))
                           for batch in raw]
                started = clock()
                network = runtime_network(model, device=target, dtype=dtype)  # moved outside inference mode
                with torch.inference_mode():
                    programs.append(prepare_program(network, batches, runtime=runtime, dtype=dtype, threads=threads))
                prepared.append(clock() - started)
            if anchor is not None:  # the anchor's program takes the last place of every round
                runtime, dtype = resolved[0]
                batches = [batch.to(target, as_torch_dtype(dtype)).contiguous(memory_format=memory_format(target, dtype))
                           for batch in raw]
                network = runtime_network(anchor.network, device=target, dtype=dtype)
                with torch.inference_mode():
                    programs.append(prepare_program(network, batches[:1], runtime=runtime, dtype=dtype, threads=threads))
            with torch.inference_mode():
                warmed = [_warm_up(program, target, warmup, warmup_seconds) for program in programs]
                times: list[list[float]] = [[] for _ in programs]
                started, i = clock(), 0
                while i < rounds or clock() - started < timed_seconds:
                    for k in _rotated(len(programs), i):
                        programs[k].load(i)
                        times[k].append(_time_once(programs[k], target))
                    i += 1
                rounds = i
        name = device_name(target)
    finally:
        for program in programs:
            program.close()
        torch.set_num_threads(previous_threads)
        for (model, _, _), mode in zip(variants, was_training):
            model.train(mode)
    inputs_seen = len(raw)
    results = []
    for k, (runtime, dtype) in enumerate(resolved):
        per_input = inputs_seen if dependent[k] else 1
        ratio = anchor_seconds = None
        if anchor is not None:
            ratios = [t / a for t, a in zip(times[k], times[-1])]
            ratio = _over_inputs(ratios, per_input)
            anchor_seconds = anchor.seconds(int(raw[0].shape[0]), runtime, dtype, threads=threads, device=target)
            seconds = ratio * anchor_seconds
        else:
            seconds = _over_inputs(times[k], per_input)
        results.append(Latency(seconds=seconds, device=name, batch_size=int(raw[0].shape[0]), repeats=rounds,
                               method=programs[k].timing, runtime=runtime, dtype=dtype,
                               gate_mode=_gate_mode(variants[k][0]), warmup=warmed[k], prepare_seconds=prepared[k],
                               versions=runtime_versions(runtime, target), anchor=None if anchor is None else anchor.name,
                               anchor_seconds=anchor_seconds, ratio=ratio))
    return results


ROUNDS_PER_INPUT = 5  # anchored rounds per input of an input-dependent network, at least


def _over_inputs(values: Sequence[float], inputs: int) -> float:
    """The median of ``values`` (one per round, round i on input i mod ``inputs``), or with several inputs the
    mean over inputs of each input's median: the expected figure of the inputs."""
    if inputs <= 1:
        return statistics.median(values)
    groups = [values[i::inputs] for i in range(inputs)]
    return statistics.fmean(statistics.median(group) for group in groups if group)


def _input_dependent(model: nn.Module) -> bool:
    """Whether ``model``'s cost depends on its input: active gates, or routers (``input_dependent``)."""
    return bool(getattr(model, "input_dependent", False)) or any(
        isinstance(m, GatedBlock) and m.gate_active for m in model.modules())


class Anchor:
    """The reference network of anchored timing and its latency, measured once per batch size, runtime and
    precision (:func:`anchor_latency`) or given (a study stores what its first measurement found, so every
    worker and every resumed run scales by the same figures: :meth:`known`)."""

    def __init__(self, network: nn.Module, *, name: str, resolution: int, known: dict[str, float] | None = None,
                 warmup_seconds: float = 1.0, repeats: int = 100, timed_seconds: float = 0.0) -> None:
        self.network, self.name, self.resolution = network.eval(), name, resolution
        self.warmup_seconds, self.repeats, self.timed_seconds = warmup_seconds, repeats, timed_seconds
        self._seconds: dict[str, float] = dict(known or {})

    @staticmethod
    def key(batch_size: int, runtime: str, dtype: str) -> str:
        return f"{runtime} {dtype} batch {batch_size}"

    def seconds(self, batch_size: int, runtime: str, dtype: str, *, threads: int | None,
                device: torch.device) -> float:
        key = self.key(batch_size, runtime, dtype)
        if key not in self._seconds:
            self._seconds[key] = anchor_latency(self.network, batch_size, resolution=self.resolution, runtime=runtime,
                                                dtype=dtype, threads=threads, device=device,
                                                warmup_seconds=self.warmup_seconds, repeats=self.repeats,
                                                timed_seconds=self.timed_seconds)
        return self._seconds[key]

    def known(self) -> dict[str, float]:
        """The figures measured or given so far: ``"<runtime> <dtype> batch <B>" -> seconds``."""
        return dict(self._seconds)

    def adopt(self, figures: dict[str, float]) -> None:
        """Scale by these figures from now on (a study's stored ones), where they are given."""
        self._seconds.update(figures)


def anchor_latency(network: nn.Module, batch_size: int, *, resolution: int, runtime: str, dtype: str,
                   threads: int | None, device: torch.device, warmup_seconds: float = 1.0, repeats: int = 100,
                   timed_seconds: float = 0.0) -> float:
    """The anchor's own latency: median of ``repeats`` forwards (at least; for at least ``timed_seconds``) after
    ``warmup_seconds`` of warm-up, on zeros of its input shape."""
    images = torch.zeros(batch_size, 3, resolution, resolution)
    return measure_variants([(network, runtime, dtype)], images, device=device, warmup=5, repeats=repeats,
                            threads=threads, warmup_seconds=warmup_seconds, timed_seconds=timed_seconds)[0].seconds


def _rotated(count: int, round_index: int) -> list[int]:
    start = round_index % count
    return [*range(start, count), *range(start)]


def _gate_mode(model: nn.Module) -> str | None:
    active = [m for m in model.modules() if isinstance(m, GatedBlock) and m.gate_active]
    if not active:
        return None
    return "gathered" if all(block.gather for block in active) else "masked"


def _warm_up(program: Program, device: torch.device, count: int, seconds: float) -> int:
    """Run ``program`` untimed until both ``count`` forwards and ``seconds`` of wall time have passed; returns the
    forwards run. With a time to fill, CUDA is synchronised after each forward so the time is work done."""
    started, done = clock(), 0
    while done < count or clock() - started < seconds:
        program.load(done)
        program.run()
        if seconds > 0 and device.type == "cuda":
            torch.cuda.synchronize(device)
        done += 1
    return done


def _time_once(program: Program, device: torch.device) -> float:
    """Seconds of one forward of the loaded input."""
    if program.timing == "cuda_events":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        # Drain the queue first so the pair times this forward alone, launch overhead included.
        torch.cuda.synchronize(device)
        start.record()
        program.run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0  # elapsed_time is in milliseconds
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = clock()
    program.run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - started
