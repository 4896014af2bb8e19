"""How a command times its networks: the ``latency.*`` settings with ``auto`` resolved for one device.

:class:`LatencyPlan` is what the search, the export and the budget check share, so a network is
timed the same way wherever its latency is reported, and what a study's identity records
(:meth:`LatencyPlan.identity`): runtime, precision, batch, warm-up, repeats, threads, the device's
name and the versions that produce the figures. A study timed on ``graph`` in float16 therefore never
mixes with one timed ``eager`` in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from nas.latency.measure import Anchor, Latency, device_name, measure_latencies
from nas.latency.runtimes import gate_mode, resolve_runtime, runtime_versions
from nas.settings import LatencySettings
from search_spaces import SearchSpace
from supernet.evaluation.baselines import untrained_supernet

__all__ = ["ANCHOR_EFFORT", "ANCHOR_WIDTH", "DEFAULT_BATCH_SIZES", "LatencyPlan", "space_anchor"]

ANCHOR_EFFORT = 5  # the anchor's own figure: this many times a candidate's warm-up, repeats and timed seconds
ANCHOR_WIDTH = 0.5  # the anchor of a space: its uniform network at this width, between the smallest and the full

DEFAULT_BATCH_SIZES = {"cpu": 1, "cuda": 256}  # latency.batch_size: null -- GPUs serve batches, a CPU often one image


@dataclass(frozen=True)
class LatencyPlan:
    """Resolved latency settings for ``device`` (``threads`` only on the CPU)."""

    device: torch.device
    runtime: str
    dtype: str
    batch_size: int
    warmup: int
    warmup_seconds: float
    repeats: int
    threads: int | None
    anchored: bool = False  # time relative to ``anchor`` (latency.anchor; on the CPU by default)
    anchor: Anchor | None = None  # the reference network, attached by whoever knows the search space (with_anchor)
    timed_seconds: float = 0.0  # keep timing rounds until this much wall time has passed (latency.timed_seconds)

    @classmethod
    def from_settings(cls, settings: LatencySettings, device: torch.device | str) -> LatencyPlan:
        """``settings`` for ``device``; one-line :class:`nas.latency.runtimes.LatencyRuntimeError` for a runtime or
        precision the device cannot run."""
        device = torch.device(device)
        runtime, dtype = resolve_runtime(_value(settings.runtime), _value(settings.dtype), device=device)
        batch = settings.batch_size if settings.batch_size is not None else DEFAULT_BATCH_SIZES[device.type]
        anchor = _value(getattr(settings, "anchor", "off"))
        return cls(device=device, runtime=runtime, dtype=dtype, batch_size=int(batch), warmup=settings.warmup,
                   warmup_seconds=float(settings.warmup_seconds), repeats=settings.repeats,
                   timed_seconds=float(settings.timed_seconds),
                   threads=settings.threads if device.type == "cpu" else None,
                   anchored=anchor == "on" or (anchor == "auto" and device.type == "cpu"))

    def with_anchor(self, anchor: Anchor) -> LatencyPlan:
        """This plan with its reference network (used only if the plan is anchored), whose own figure takes
        :data:`ANCHOR_EFFORT` times a candidate's warm-up, repeats and timed seconds: every figure is scaled by it."""
        anchor.warmup_seconds, anchor.repeats = ANCHOR_EFFORT * self.warmup_seconds, ANCHOR_EFFORT * self.repeats
        anchor.timed_seconds = ANCHOR_EFFORT * self.timed_seconds
        return replace(self, anchor=anchor)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The batches every scored candidate is timed at: the objective's, and 1 (first)."""
        return tuple(sorted({1, self.batch_size}))

    def gate_mode(self, batch_size: int) -> str:
        """How gated networks run at ``batch_size`` on this plan's runtime (gathered: eager at batch 1 only)."""
        return gate_mode(self.runtime, batch_size)

    def describe(self) -> str:
        """``"graph float16"``: what the figures are of."""
        return f"{self.runtime} {self.dtype}"

    def measure(self, networks: Sequence[nn.Module], inputs: torch.Tensor | Sequence[torch.Tensor]) -> list[Latency]:
        """:func:`nas.latency.measure.measure_latencies` of ``networks`` (interleaved) with this plan."""
        if self.anchored and self.anchor is None:
            raise ValueError("an anchored latency plan needs its reference network: plan.with_anchor(...)")
        return measure_latencies(networks, inputs, device=self.device, warmup=self.warmup, repeats=self.repeats,
                                 threads=self.threads, runtime=self.runtime, dtype=self.dtype,
                                 warmup_seconds=self.warmup_seconds, anchor=self.anchor if self.anchored else None,
                                 timed_seconds=self.timed_seconds)

    def identity(self) -> dict[str, Any]:
        """Flat ``key: value`` of everything that makes two timings comparable (joins a study's identity)."""
        previous = torch.get_num_threads()
        try:
            if self.threads is not None:
                torch.set_num_threads(self.threads)
            device = device_name(self.device)
        finally:
            torch.set_num_threads(previous)
        return {
            "device": device, "latency.runtime": self.runtime, "latency.dtype": self.dtype,
            "latency.batch_size": self.batch_size, "latency.warmup": self.warmup,
            "latency.warmup_seconds": self.warmup_seconds, "latency.repeats": self.repeats,
            "latency.threads": self.threads,
            # only when set: a study made before the setting existed resumes with latency.timed_seconds=0
            **({"latency.timed_seconds": self.timed_seconds} if self.timed_seconds else {}),
            "latency.anchor": (self.anchor.name if self.anchor is not None else "on") if self.anchored else None,
            **{f"latency.versions.{name}": version for name, version in runtime_versions(self.runtime, self.device).items()},
        }


def _value(choice: Any) -> str:
    """A settings enum member (or plain string) as its string value."""
    return str(getattr(choice, "value", choice))


def space_anchor(space: SearchSpace, resolution: int) -> Anchor:
    """The reference network candidates of ``space`` are timed against: its uniform network at
    :data:`ANCHOR_WIDTH`, gates off, with the weights of a supernet initialised under seed 0 (the same network
    in every process, whatever the checkpoint)."""
    network = untrained_supernet(space, seed=0, with_gates=False).extract(space.uniform_config(ANCHOR_WIDTH)).eval()
    return Anchor(network, name=f"{space.name} at uniform width {ANCHOR_WIDTH:g}", resolution=resolution)
