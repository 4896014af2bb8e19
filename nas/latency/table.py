"""Latency tables: predict a sub-network's latency on a device you are not on (built by :mod:`nas.latency.build`).

Build the table once on the target device; search anywhere with it::

    python -m nas.latency_table --space resnet18_cifar --resolution 32 --device cpu --batch-size 1 --out cpu1.json
    python -m nas.latency_table --space resnet18_cifar --device cuda --runtime graph --batch-size 256 --out h200.json
    python -m nas.search --latency-table cpu1.json --latency-budget 3ms

Every entry and network is timed on the table's runtime and precision (:mod:`nas.latency.runtimes`:
``eager`` on CPU or CUDA, ``graph`` (CUDA graphs) on CUDA, ``onnxruntime`` on the CPU), as the search
would time whole networks.

A table times every part of the space's networks alone at every width combination it can appear
in (:mod:`nas.latency.entries`: stem, blocks, gates, gathered gated blocks, head; warm-up, fixed
threads, medians), and 15 whole networks (the 7 uniform widths from min to max and 8 seeded random
configs). The prediction is the additive model of latency lookup tables (Cai et al. 2019,
ProxylessNAS; Wu et al. 2019, FBNet) plus an overhead fitted on those networks:

    latency(cfg) = S + overhead(S),  overhead(S) = fixed + proportional * S,  S = the sum of cfg's entries

``fixed`` and ``proportional`` are the Theil-Sen line of the networks' measured latency minus their
S (robust to a few networks timed while the machine was busy); S is held to the fitted range, so a
gated network smaller than the min config is not extrapolated. The overhead is not one constant
because it grows with the network: a part timed alone finds its weights in cache, inside the whole
network it does not (on the 2-core development CPU, resnet18_cifar's measured overhead was 0.1 ms at
min width and 2.6 ms at max), so one constant misses the small or the large networks by tens of
percent.

A gated config runs gathered where the runtime allows it (eager at batch 1, ``gathered`` true in the
table), so its cost depends on the input: per input, each gated block costs its gate plus the
gathered block at the channels its gate kept (rounded up to a multiple of 8, see
:mod:`nas.latency.entries`); the prediction is the mean over calibration inputs of the per-input S,
plus the overhead. Elsewhere (another runtime, batch > 1) a gated network runs masked: every channel
computed, plus the gates (the mask multiplication itself is not tabulated).

File format (JSON, ``format_version`` 2): the build's metadata (space, resolution, batch size,
runtime, dtype, whether gated blocks run gathered, device, threads, warm-up, repeats, versions, date,
build time, recheck), ``overhead``
(coefficients and the networks measured) and ``entries[section][module][widths]`` in seconds, e.g.
``entries["blocks"]["layer2.0"]["in=64 inner=96 out=128"]``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from nas.latency.entries import (
    block_entry_widths,
    gate_widths,
    gathered_widths,
    head_name,
    kept_grid,
    plan_entries,
    widths_key,
)
from search_spaces import (
    SearchSpace,
    SubnetConfig,
    UserError,
    first_line,
    get_space,
)
from search_spaces.spec import BlockSpec
from supernet.nn.blocks import GatedBlock
from supernet.nn.models import SuperNet

__all__ = ["FORMAT", "FORMAT_VERSION", "LatencyPredictor", "LatencyTable", "LatencyTableError", "Overhead",
           "canonical_sha256", "kept_channels"]

FORMAT = "slimnas latency table"
FORMAT_VERSION = 2  # 2: runtime, dtype and gathered recorded (issue 18)
OVERHEAD_MODEL = ("overhead = fixed_seconds + proportional * S, S = the sum of entries held to entries_range_seconds; "
                  "Theil-Sen line through the measured networks")
_METADATA: dict[str, type | tuple[type, ...]] = {
    "space": str, "resolution": int, "batch_size": int, "runtime": str, "dtype": str, "gathered": bool, "device": str,
    "threads": (int, type(None)),
    "warmup": int, "repeats": int, "versions": dict, "created": str, "overhead": dict, "entries": dict,
}




class LatencyTableError(UserError):
    """A latency table that cannot be used: unreadable, malformed, incomplete, or for another setting."""


class LatencyPredictor(Protocol):
    """What :class:`nas.study.candidates.CandidateEvaluator` needs instead of timing the device."""

    def predicted_latency(self, network: SuperNet, cfg: SubnetConfig, images: torch.Tensor, *,
                          batch_size: int = 256) -> dict[str, Any]: ...


def _rebuild_hint(space: str, resolution: int | str, batch_size: int | str) -> str:
    return (f"build one with python -m nas.latency_table --space {space} --resolution {resolution} "
            f"--batch-size {batch_size} --device DEVICE --runtime RUNTIME --out TABLE.json")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, repr=False)
class LatencyTable:
    """A loaded, validated latency table of one space at one resolution and batch size (seconds)."""

    space: SearchSpace
    resolution: int
    batch_size: int
    runtime: str
    dtype: str
    gathered: bool  # gated blocks at this runtime and batch run gathered (kept channels only), else masked
    device: str
    repeats: int
    versions: Mapping[str, Any]
    entries: Mapping[str, Mapping[str, Mapping[str, float]]]
    overhead: Overhead = field(default_factory=lambda: Overhead())
    sha256: str = ""
    path: Path | None = None
    _grids: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        return (f"LatencyTable({self.space.name!r}, {self.resolution} px, batch {self.batch_size}, {self.runtime} "
                f"{self.dtype}, {self.device!r}, "
                f"sha256 {self.sha256[:12]!r}, path {str(self.path)!r})")

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read and validate a table file; one-line :class:`LatencyTableError` on the first problem."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise LatencyTableError(f"latency table {path}: cannot be read ({first_line(error)}); "
                                    "pass the JSON file python -m nas.latency_table wrote") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise LatencyTableError(f"latency table {path}: not valid JSON ({error}); "
                                    "pass the JSON file python -m nas.latency_table wrote") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Any, *, source: Path | None = None) -> LatencyTable:
        """Validate the parsed JSON of a table (format, metadata, every entry present, finite and >= 0)."""
        where = f"latency table {source}" if source is not None else "latency table"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyTableError(f"{where}: not a latency table (its 'format' is not {FORMAT!r}); "
                                    "pass a file python -m nas.latency_table wrote")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise LatencyTableError(f"{where}: format_version {version!r} is not supported; expected {FORMAT_VERSION} "
                                    "(rebuild the table with this version of python -m nas.latency_table)")
        for name, kind in _METADATA.items():
            if name not in data:
                raise LatencyTableError(f"{where}: missing field {name!r}; rebuild the table")
            if not isinstance(data[name], kind) or (isinstance(data[name], bool) and kind is not bool):
                raise LatencyTableError(f"{where}: field {name!r} is {data[name]!r}, of the wrong type; rebuild the table")
        try:
            space = get_space(data["space"])
        except KeyError as error:
            raise LatencyTableError(f"{where}: {error.args[0]}") from None
        if data["resolution"] < 1 or data["batch_size"] < 1:
            raise LatencyTableError(f"{where}: resolution {data['resolution']} and batch_size {data['batch_size']} "
                                    "must be positive; rebuild the table")
        hint = _rebuild_hint(space.name, data["resolution"], data["batch_size"])
        entries = data["entries"]
        missing, bad = [], []
        for entry in plan_entries(space, batch_size=data["batch_size"], gathered=data["gathered"]):
            section = entries.get(entry.section)
            module = section.get(entry.module) if isinstance(section, dict) else None
            value = module.get(entry.key) if isinstance(module, dict) else None
            if value is None:
                missing.append(entry)
            elif not _is_number(value) or not math.isfinite(value) or value < 0:
                bad.append((entry, value))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise LatencyTableError(f"{where}: missing entry {missing[0]}{more}; {hint}")
        if bad:
            (entry, value), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise LatencyTableError(f"{where}: entry {entry} is {value!r}{more}; times must be finite seconds >= 0; {hint}")
        return cls(space=space, resolution=data["resolution"], batch_size=data["batch_size"], runtime=data["runtime"],
                   dtype=data["dtype"], gathered=data["gathered"], device=data["device"], versions=data["versions"], repeats=data["repeats"], entries=entries,
                   overhead=Overhead.from_dict(data["overhead"], where=f"{where}: overhead", hint=hint),
                   sha256=canonical_sha256(data), path=source)

    def check_matches(self, *, space: str, resolution: int, batch_size: int | None, runtime: str | None = None,
                      dtype: str | None = None) -> None:
        """Refuse (one line) a table built for another space, resolution, batch size, runtime or precision than the
        search's; ``None`` (the setting's ``auto``/``null``) takes the table's."""
        ours = (self.space.name, self.resolution, self.batch_size)
        theirs = (space, resolution, self.batch_size if batch_size is None else batch_size)
        if ours != theirs:
            raise LatencyTableError(
                f"--latency-table {self.path}: built for {ours[0]} at {ours[1]} px, batch {ours[2]}; this search needs "
                f"{theirs[0]} at {theirs[1]} px, batch {theirs[2]} (latency.batch_size); "
                f"{_rebuild_hint(space, resolution, theirs[2])}"
            )
        for key, asked, built in (("runtime", runtime, self.runtime), ("dtype", dtype, self.dtype)):
            if asked is not None and asked != built:
                raise LatencyTableError(f"--latency-table {self.path}: timed on {self.runtime} in {self.dtype}; this "
                                        f"search asks latency.{key}={asked}; use latency.{key}={built} (or auto), or "
                                        f"{_rebuild_hint(space, resolution, theirs[2])}")

    # -- predicting ------------------------------------------------------------------------------------
    def predict(self, cfg: SubnetConfig, kept: Mapping[str, Sequence[int] | np.ndarray] | None = None) -> float:
        """Predicted seconds of ``cfg``: the sum of its entries plus the overhead.

        A gated config at batch 1 needs ``kept``: per gated block, the inner channels its gate kept for
        each of N inputs (see :func:`kept_channels`); the result is the mean over the N inputs.
        """
        if cfg.space != self.space.name or cfg.resolution != self.resolution:
            raise LatencyTableError(f"config of {cfg.space} at {cfg.resolution} px: this table is for "
                                    f"{self.space.name} at {self.resolution} px")
        self.space.validate(cfg)
        channels = cfg.channels
        last = self.space.blocks[-1].out_layer
        head = (("in", channels[last]),) + ((("out", channels[self.space.head_layer]),) if self.space.head_layer else ())
        seconds = (self._entry("stem", self.space.stem_layer, (("out", channels[self.space.stem_layer]),))
                   + self._entry("head", head_name(self.space), head))
        gathered: list[np.ndarray] = []
        for spec in self.space.blocks:
            gated = cfg.gate_thresholds is not None and spec.gated
            if gated:
                seconds += self._entry("gates", spec.name, gate_widths(spec, channels))
            if not gated or not self.gathered:  # static, or masked: every inner channel computed
                seconds += self._entry("blocks", spec.name, block_entry_widths(spec, channels))
                continue
            if kept is None or spec.name not in kept:
                raise ValueError(f"predict: gated config at batch 1 needs the kept channels of block {spec.name!r}")
            counts = np.asarray(kept[spec.name], dtype=np.float64)
            if counts.size and not 0 <= counts.min() <= counts.max() <= channels[spec.gated_layer]:
                raise ValueError(f"predict: kept channels of block {spec.name!r} must lie in [0, "
                                 f"{channels[spec.gated_layer]}], got {counts.min():g} to {counts.max():g}")
            grid, times = self._gathered_grid(spec, channels)
            gathered.append(times[np.searchsorted(grid, counts, side="left")])
        if gathered:
            if len({len(times) for times in gathered}) > 1 or len(gathered[0]) == 0:
                raise ValueError("predict: kept channels must cover the same, non-empty set of inputs for every block")
            seconds += float(np.sum(gathered, axis=0).mean())
        return seconds + self.overhead.at(seconds)

    def predicted_latency(self, network: SuperNet, cfg: SubnetConfig, images: torch.Tensor, *,
                          batch_size: int = 256) -> dict[str, Any]:
        """:meth:`predict` as :meth:`nas.latency.measure.Latency.to_dict` (method ``"table"``), with the table's
        file and hash; a gated ``network`` (recalibrated) runs its gates on ``images`` for the kept channels."""
        # the search times every candidate at its evaluation resolution, whatever cfg.resolution says (seed configs
        # carry the space's default); check_matches made sure that resolution is the table's
        cfg = SubnetConfig(cfg.space, dict(cfg.channels), cfg.gate_thresholds, self.resolution)
        kept = kept_channels(network, images, batch_size=batch_size) if cfg.gated and self.gathered else None
        return {"seconds": self.predict(cfg, kept), "device": self.device, "batch_size": self.batch_size,
                "repeats": self.repeats, "method": "table", "runtime": self.runtime, "dtype": self.dtype,
                "gate_mode": ("gathered" if self.gathered else "masked") if cfg.gated else None, "warmup": 0,
                "prepare_seconds": 0.0, "versions": dict(self.versions), "anchor": None, "anchor_seconds": None,
                "ratio": None, "table": str(self.path) if self.path else None, "table_sha256": self.sha256}

    def _entry(self, section: str, module: str, widths: tuple[tuple[str, int], ...]) -> float:
        return float(self.entries[section][module][widths_key(widths)])

    def _gathered_grid(self, spec: BlockSpec, channels: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """Tabulated kept counts of ``spec`` at ``channels``' other widths, and their seconds (cached)."""
        cache_key = (spec.name, widths_key(gathered_widths(spec, channels, 0)))
        if cache_key not in self._grids:
            grid = kept_grid(self.space, spec)
            times = [self._entry("gathered", spec.name, gathered_widths(spec, channels, kept)) for kept in grid]
            self._grids[cache_key] = (np.asarray(grid, dtype=np.float64), np.asarray(times, dtype=np.float64))
        return self._grids[cache_key]


def canonical_sha256(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys, no spaces): a table's identity, whatever its layout."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


@torch.no_grad()
def kept_channels(network: SuperNet, images: torch.Tensor, *, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per active gated block of ``network``: (N,) inner channels its gate keeps for each of ``images``.

    Runs masked, in eval mode (the blocks record ``last_mask``); mode and training flag are restored.
    """
    was_training, mode = network.training, network.gate_mode
    blocks = {name: module for name, module in network.named_modules()
              if isinstance(module, GatedBlock) and module.gate_active}
    device = next(network.parameters()).device
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    network.eval()
    network.set_gate_mode("masked")
    try:
        for batch in images.split(batch_size):
            network(batch.to(device))
            for name, block in blocks.items():
                assert block.last_mask is not None
                kept[name].append(block.last_mask.sum(dim=1).round().long().cpu())
    finally:
        network.set_gate_mode(mode)
        network.train(was_training)
    return {name: torch.cat(counts).numpy() for name, counts in kept.items()}


@dataclass(frozen=True)
class Overhead:
    """What a whole network costs beyond the sum S of its entries: ``fixed + proportional * S`` (S held to
    ``entries_range``); ``measured`` are the networks it was fitted on. The default is no overhead."""

    fixed_seconds: float = 0.0
    proportional: float = 0.0
    entries_range: tuple[float, float] = (0.0, math.inf)
    measured: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    def at(self, entries_seconds: float) -> float:
        low, high = self.entries_range
        return self.fixed_seconds + self.proportional * min(max(entries_seconds, low), high)

    @classmethod
    def fit(cls, measured: Sequence[dict[str, Any]]) -> Overhead:
        """The Theil-Sen line of network seconds on entries seconds over ``measured`` ({network,entries}_seconds).

        Theil-Sen (slope: the median of the pairwise slopes; intercept: the median residual) rather than least
        squares: a network timed while something else ran is an outlier, and up to about 29 % of them move
        it little.
        """
        sums = np.array([row["entries_seconds"] for row in measured], dtype=np.float64)
        networks = np.array([row["network_seconds"] for row in measured], dtype=np.float64)
        first, second = np.triu_indices(len(sums), k=1)
        apart = np.abs(sums[second] - sums[first]) > 1e-9
        slopes = (networks[second] - networks[first])[apart] / (sums[second] - sums[first])[apart]
        # one network shape only (a fixed-width space): a constant overhead
        slope = float(np.median(slopes)) if slopes.size else 1.0
        intercept = float(np.median(networks - slope * sums))
        return cls(intercept, slope - 1.0, (float(sums.min()), float(sums.max())), tuple(measured))

    def to_dict(self) -> dict[str, Any]:
        return {"model": OVERHEAD_MODEL, "fixed_seconds": self.fixed_seconds, "proportional": self.proportional,
                "entries_range_seconds": list(self.entries_range),
                "measured": [{**row, "overhead_seconds": row["network_seconds"] - row["entries_seconds"]}
                             for row in self.measured]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str, hint: str) -> Overhead:
        """Read a table's ``overhead``; a one-line :class:`LatencyTableError` if a number is missing or not finite."""
        values = [data.get("fixed_seconds"), data.get("proportional")]
        entries_range = data.get("entries_range_seconds")
        if isinstance(entries_range, list) and len(entries_range) == 2:
            values += entries_range
        if len(values) != 4 or not all(_is_number(v) and math.isfinite(v) for v in values) or not (
                0 <= values[2] <= values[3]):
            raise LatencyTableError(f"{where}: fixed_seconds, proportional and entries_range_seconds [low, high] must be "
                                    f"finite numbers, 0 <= low <= high; {hint}")
        measured = data.get("measured")
        return cls(float(values[0]), float(values[1]), (float(values[2]), float(values[3])),
                   tuple(measured) if isinstance(measured, list) else ())
