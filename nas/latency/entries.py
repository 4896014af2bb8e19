"""What a latency table holds, and how one of its entries is built and timed.

A sub-network's latency is predicted as the sum of its parts, each measured alone at its exact
shape (the shape ``SuperNet.extract(cfg)`` gives it), plus an overhead (:mod:`nas.latency.table`).
The parts, as table sections:

* ``stem``: the stem at each of its width choices (ResNet: conv, BN, ReLU, max-pool if any);
* ``blocks``: every block at every width combination it can appear in: its input, inner and output
  widths, each from its decision's choices, with ties respected (a block whose input and output
  share a tie group has one entry per width of the group, not per pair);
* ``gates``: for gated blocks, the gate alone (pool, two 1x1 convs, threshold) at each input x
  gated-width combination;
* ``gathered`` (tables of runtimes that run gated networks gathered: eager at batch 1): the gated
  block without its gate, running only ``kept`` inner channels, for kept = 0, 8, 16, ... up to the
  gated layer's maximum. A gate can keep any count; a count between two multiples of 8 is looked up
  at the next one up, not interpolated: convolution kernels compute channels in SIMD blocks of 8 or
  16, so time is a staircase in the kept channels (measured with AVX-512, tiny's layer1.0 at 32 px:
  237 us at 16 kept, 324 at 17, 332 at 24; interpolating between 16 and 24 would say 249 at 17).
  The block is the real one (``GatedBlock`` in
  gathered mode) with its gate swapped for a fixed mask, so whatever the gathered path costs (index
  selection, new conv shapes) is measured, in the steady state (a shape's first run, which builds
  its kernels, is warm-up);
* ``head``: ResNet's global pool, MobileNetV2's final 1x1 conv and pool.

Entry keys are readable: ``entries["blocks"]["layer2.0"]["in=64 inner=96 out=128"]``.

Modules are built here directly from :mod:`supernet.nn.blocks` (building a whole network per entry
would cost more than timing it); they mirror :mod:`supernet.nn.models`, and the tests check that
their parameter shapes equal those of the extracted network's modules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from search_spaces import SearchSpace, UserError
from search_spaces.spec import CHANNEL_DIVISOR, BlockSpec
from supernet.nn.blocks import (
    BasicBlock,
    Bottleneck,
    ConvBNAct,
    GatedBlock,
    InvertedResidual,
)
from supernet.nn.gates import ChannelGate
from supernet.nn.models import build_supernet
from supernet.nn.ops import DynamicBatchNorm2d, DynamicConv2d

__all__ = ["SECTIONS", "TABULATED_FAMILIES", "Entry", "block_entry_widths", "build_entry_module",
           "count_entries", "gate_widths", "gathered_widths", "head_name", "input_sizes", "kept_grid", "plan_entries",
           "widths_key"]

Section = Literal["stem", "blocks", "gates", "gathered", "head"]
SECTIONS: tuple[str, ...] = ("stem", "blocks", "gates", "gathered", "head")
TABULATED_FAMILIES: tuple[str, ...] = ("resnet", "mobilenet_v2")  # the families whose parts are built here
GATE_THRESHOLD = 0.5  # the gate's time does not depend on it

Widths = tuple[tuple[str, int], ...]  # (("in", 64), ("inner", 96), ("out", 128)): the order keys are written in


def widths_key(widths: Widths) -> str:
    """``"in=64 inner=96 out=128"``: the readable key of one width combination."""
    return " ".join(f"{name}={value}" for name, value in widths)


@dataclass(frozen=True)
class Entry:
    """One thing a table times: ``section``, the module's name in the network, its widths."""

    section: Section
    module: str
    widths: Widths

    @property
    def key(self) -> str:
        return widths_key(self.widths)

    def __str__(self) -> str:
        return f"{self.section}[{self.module!r}][{self.key!r}]"


# -- which entries -----------------------------------------------------------------------------------
def _inner_names(spec: BlockSpec) -> tuple[str, ...]:
    return ("inner",) if len(spec.inner_layers) == 1 else tuple(f"inner{i + 1}" for i in range(len(spec.inner_layers)))


def block_entry_widths(spec: BlockSpec, channels: Mapping[str, int]) -> Widths:
    """The ``blocks`` widths of ``spec`` in a config with these ``channels``."""
    inner = tuple(zip(_inner_names(spec), (channels[layer] for layer in spec.inner_layers)))
    return (("in", channels[spec.in_layer]), *inner, ("out", channels[spec.out_layer]))


def gate_widths(spec: BlockSpec, channels: Mapping[str, int]) -> Widths:
    """The ``gates`` widths: the gate reads the block input and decides for the gated layer's channels."""
    return (("in", channels[spec.in_layer]), ("inner", channels[spec.gated_layer]))


def gathered_widths(spec: BlockSpec, channels: Mapping[str, int], kept: int) -> Widths:
    """The ``gathered`` widths: the gated (first inner) layer runs ``kept`` channels, the others their width."""
    rest = tuple(zip(_inner_names(spec)[1:], (channels[layer] for layer in spec.inner_layers[1:])))
    return (("in", channels[spec.in_layer]), ("kept", kept), *rest, ("out", channels[spec.out_layer]))


def kept_grid(space: SearchSpace, spec: BlockSpec) -> tuple[int, ...]:
    """Kept-channel counts tabulated for a gated block: every multiple of 8 up to the gated layer's maximum (and it)."""
    widest = space.layer(spec.gated_layer).max_channels
    return tuple(sorted({*range(0, widest + 1, CHANNEL_DIVISOR), widest}))


def head_name(space: SearchSpace) -> str:
    """The head's entry name: MobileNetV2's final conv layer, ResNet's global pool (``avgpool``)."""
    return space.head_layer or "avgpool"


def _combinations(space: SearchSpace, layers: Sequence[str]) -> Iterator[dict[str, int]]:
    """Every assignment of widths to ``layers`` the space allows: one choice per distinct decision among them."""
    decision_of = {layer: key for key, group in space.decisions.items() for layer in group}
    decisions = list(dict.fromkeys(decision_of[layer] for layer in layers))
    for choice in itertools.product(*(space.layer(key).width_choices for key in decisions)):
        chosen = dict(zip(decisions, choice))
        yield {layer: chosen[decision_of[layer]] for layer in layers}


def plan_entries(space: SearchSpace, *, batch_size: int, gathered: bool | None = None) -> list[Entry]:
    """Every entry a table of ``space`` at ``batch_size`` holds, in network order (see the module docstring).

    ``gathered``: whether the table's runtime runs gated blocks gathered (eager at batch 1, the default
    at batch 1); only then are the ``gathered`` entries timed.
    """
    if gathered is None:
        gathered = batch_size == 1
    if space.family not in TABULATED_FAMILIES:
        raise UserError(f"--space {space.name}: latency tables cover the {' and '.join(TABULATED_FAMILIES)} families, "
                        f"not {space.family}; search {space.name} with measured latency (no --latency-table)")
    entries = [Entry("stem", space.stem_layer, (("out", c[space.stem_layer]),))
               for c in _combinations(space, [space.stem_layer])]
    for spec in space.blocks:
        layers = [spec.in_layer, *spec.inner_layers, spec.out_layer]
        entries += [Entry("blocks", spec.name, block_entry_widths(spec, c)) for c in _combinations(space, layers)]
        if not spec.gated:
            continue
        gate_layers = [spec.in_layer, spec.gated_layer]
        entries += [Entry("gates", spec.name, gate_widths(spec, c)) for c in _combinations(space, gate_layers)]
        if gathered:
            rest = [spec.in_layer, *spec.inner_layers[1:], spec.out_layer]
            entries += [Entry("gathered", spec.name, gathered_widths(spec, {**c, spec.gated_layer: 0}, kept))
                        for c in _combinations(space, rest) for kept in kept_grid(space, spec)]
    last = space.blocks[-1].out_layer
    if space.head_layer is None:
        entries += [Entry("head", head_name(space), (("in", c[last]),)) for c in _combinations(space, [last])]
    else:
        entries += [Entry("head", space.head_layer, (("in", c[last]), ("out", c[space.head_layer])))
                    for c in _combinations(space, [last, space.head_layer])]
    return entries


def count_entries(space: SearchSpace, *, batch_size: int, gathered: bool | None = None) -> dict[str, int]:
    """Entries per section (and ``total``): what a table costs to build, before building it."""
    counts = dict.fromkeys(SECTIONS, 0)
    for entry in plan_entries(space, batch_size=batch_size, gathered=gathered):
        counts[entry.section] += 1
    return {**counts, "total": sum(counts.values())}


# -- the module of an entry ----------------------------------------------------------------------------
def input_sizes(space: SearchSpace, resolution: int) -> dict[str, tuple[int, int]]:
    """Spatial size (H, W) of the input of every block and of the head, at ``resolution``."""
    network = build_supernet(space, with_gates=False).eval()
    head_module = "avgpool" if space.head_layer is None else space.head_layer.rpartition(".")[0]
    names = {spec.name: spec.name for spec in space.blocks} | {head_module: head_name(space)}
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        network.get_submodule(module).register_forward_pre_hook(
            lambda _module, args, name=name: sizes.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for module, name in names.items()
    ]
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, resolution, resolution))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


class _FixedMask(nn.Module):
    """Stands in for a block's gate: returns the same mask whatever the input (``kept`` ones first)."""

    def __init__(self, channels: int, kept: int) -> None:
        super().__init__()
        mask = torch.zeros(1, channels)
        mask[:, :kept] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor, threshold: float) -> torch.Tensor:
        return self.mask


class _GateOnly(nn.Module):
    """A :class:`ChannelGate` with a fixed threshold, so it times like any one-input module."""

    def __init__(self, gate: ChannelGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(x, GATE_THRESHOLD)


def _block(spec: BlockSpec, widths: Mapping[str, int], *, gate_hidden_channels: int | None) -> GatedBlock:
    """The block ``spec`` at ``widths`` (layer name -> channels), as ``supernet.nn.models`` builds it."""
    in_channels, out_channels = widths[spec.in_layer], widths[spec.out_layer]
    if spec.kind == "basic":
        return BasicBlock(in_channels, widths[spec.inner_layers[0]], out_channels, stride=spec.stride,
                          downsample=spec.shortcut_layer is not None, gate_hidden_channels=gate_hidden_channels)
    if spec.kind == "bottleneck":
        inner = (widths[spec.inner_layers[0]], widths[spec.inner_layers[1]])
        return Bottleneck(in_channels, inner, out_channels, stride=spec.stride,
                          downsample=spec.shortcut_layer is not None, gate_hidden_channels=gate_hidden_channels)
    if spec.kind != "inverted_residual":
        raise ValueError(f"block {spec.name}: kind {spec.kind!r} has no latency-table module")
    expanded = widths[spec.inner_layers[0]] if spec.inner_layers else None
    return InvertedResidual(in_channels, expanded, out_channels, stride=spec.stride, residual=spec.has_residual,
                            gate_hidden_channels=gate_hidden_channels)


def _layer_widths(spec: BlockSpec, widths: Widths) -> dict[str, int]:
    """Layer name -> channels from an entry's widths (``kept`` entries give the gated layer its maximum)."""
    values = dict(widths)
    inner = [values[name] for name in _inner_names(spec) if name in values]
    layers = {spec.in_layer: values["in"], spec.out_layer: values["out"]}
    if "kept" in values:
        inner = [0, *inner]
    layers.update(zip(spec.inner_layers, inner))
    return layers


def build_entry_module(space: SearchSpace, entry: Entry, sizes: Mapping[str, tuple[int, int]], *,
                       batch_size: int, resolution: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The module ``entry`` times, in eval mode, and its input shape (batch, channels, H, W)."""
    values = dict(entry.widths)
    if entry.section == "stem":
        width = values["out"]
        if space.family == "mobilenet_v2":
            module: nn.Module = ConvBNAct(3, width, space.stem_kernel, stride=space.stem_stride)
        else:
            module = nn.Sequential(
                DynamicConv2d(3, width, space.stem_kernel, stride=space.stem_stride, padding=space.stem_kernel // 2),
                DynamicBatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if space.stem_max_pool else nn.Identity(),
            )
        return module.eval(), (batch_size, 3, resolution, resolution)
    if entry.section == "head":
        pool = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
        head = [ConvBNAct(values["in"], values["out"], 1)] if "out" in values else []
        return nn.Sequential(*head, *pool).eval(), (batch_size, values["in"], *sizes[entry.module])
    spec = next(block for block in space.blocks if block.name == entry.module)
    shape = (batch_size, values["in"], *sizes[spec.name])
    if entry.section == "gates":
        gate = ChannelGate(values["in"], spec.gate_hidden_channels, values["inner"])
        return _GateOnly(gate).eval(), shape
    layers = _layer_widths(spec, entry.widths)
    if entry.section == "blocks":
        return _block(spec, layers, gate_hidden_channels=None).eval(), shape
    # gathered: the real gated block in gathered mode, at the gated layer's widest choice, keeping `kept`
    gated_width = space.layer(spec.gated_layer).max_channels
    block = _block(spec, {**layers, spec.gated_layer: gated_width}, gate_hidden_channels=spec.gate_hidden_channels)
    block.gate = _FixedMask(gated_width, values["kept"])  # type: ignore[assignment]
    block.gate_threshold = GATE_THRESHOLD
    block.gather = True
    return block.eval(), shape
