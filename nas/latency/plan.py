"""How a command times its networks: the ``latency.*`` settings with ``auto`` resolved for one device.

:class:`LatencyPlan` is what the search, the export and the budget check share, so a network is
timed the same way wherever its latency is reported, and what a study's identity records
(:meth:`LatencyPlan.identity`): runtime, precision, batch, warm-up, repeats, threads, the device's
name and the versions that produce the figures. A study timed on ``graph`` in float16 therefore never
mixes with one timed ``eager`` in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas.latency.measure import Latency, device_name, measure_latencies
from nas.latency.runtimes import gate_mode, resolve_runtime, runtime_versions
from nas.settings import LatencySettings

__all__ = ["DEFAULT_BATCH_SIZES", "LatencyPlan"]

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

    @classmethod
    def from_settings(cls, settings: LatencySettings, device: torch.device | str) -> LatencyPlan:
        """``settings`` for ``device``; one-line :class:`nas.latency.runtimes.LatencyRuntimeError` for a runtime or
        precision the device cannot run."""
        device = torch.device(device)
        runtime, dtype = resolve_runtime(_value(settings.runtime), _value(settings.dtype), device=device)
        batch = settings.batch_size if settings.batch_size is not None else DEFAULT_BATCH_SIZES[device.type]
        return cls(device=device, runtime=runtime, dtype=dtype, batch_size=int(batch), warmup=settings.warmup,
                   warmup_seconds=float(settings.warmup_seconds), repeats=settings.repeats,
                   threads=settings.threads if device.type == "cpu" else None)

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
        return measure_latencies(networks, inputs, device=self.device, warmup=self.warmup, repeats=self.repeats,
                                 threads=self.threads, runtime=self.runtime, dtype=self.dtype,
                                 warmup_seconds=self.warmup_seconds)

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
            **{f"latency.versions.{name}": version for name, version in runtime_versions(self.runtime, self.device).items()},
        }


def _value(choice: Any) -> str:
    """A settings enum member (or plain string) as its string value."""
    return str(getattr(choice, "value", choice))
