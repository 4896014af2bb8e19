"""Search-space specifications: what can vary in a supernet, as plain frozen data.

A :class:`SearchSpace` names every searchable layer by a stable name (the torchvision module path
of the convolution whose output channels it sets), gives its maximum channels and width choices,
states which widths are tied, and which blocks carry dynamic channel gates. It imports nothing of
this project but :mod:`search_spaces.config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Mapping, Sequence

import numpy as np

from search_spaces.config import ConfigError, SubnetConfig

BlockKind = Literal["basic", "bottleneck", "inverted_residual", "transformer"]
Family = Literal["resnet", "mobilenet_v2", "vit"]

DEFAULT_MULTIPLIERS: tuple[float, ...] = tuple(0.25 + i / 8 for i in range(7))  # 0.25 ... 1.0
CHANNEL_DIVISOR = 8


def round_channels(channels: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Round to the nearest multiple of ``divisor``, never below ``divisor``."""
    return max(divisor, int(channels + divisor / 2) // divisor * divisor)


def width_choices_for(max_channels: int, multipliers: Sequence[float] = DEFAULT_MULTIPLIERS) -> tuple[int, ...]:
    """Distinct channel counts for ``max_channels`` scaled by each multiplier, ascending.

    The largest choice is always ``max_channels`` itself, even when it is not a multiple of 8
    (e.g. a 3-channel input or a 1000-way head never get here, but odd widths stay reachable).
    """
    choices = {min(round_channels(max_channels * m), max_channels) for m in multipliers}
    choices.add(max_channels)
    return tuple(sorted(choices))


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer: its output channels are chosen from ``width_choices``."""

    name: str
    max_channels: int
    width_choices: tuple[int, ...]

    @property
    def min_channels(self) -> int:
        return self.width_choices[0]


@dataclass(frozen=True)
class BlockSpec:
    """One residual block of the network.

    ``inner_layers`` are the layers inside the block whose channels the residual path does not see
    (ResNet ``conv1``/``conv2`` of a bottleneck, the MobileNetV2 expansion). A gated block masks
    the channels of its first inner layer (Krishna et al. 2023): the first layer's outputs and the
    next layer's inputs are pruned per input.
    """

    name: str
    kind: BlockKind
    stride: int
    in_layer: str
    inner_layers: tuple[str, ...]
    out_layer: str
    shortcut_layer: str | None
    gated: bool
    gate_hidden_channels: int
    has_residual: bool

    @property
    def gated_layer(self) -> str:
        return self.inner_layers[0]


@dataclass(frozen=True)
class SearchSpace:
    """A family's searchable layers, blocks, width ties and gate-threshold range.

    ``ties`` lists groups of layers that must share one width (the residual path of a stage);
    every layer belongs to exactly one *decision* (its tie group, or itself alone).
    """

    name: str
    family: Family
    stem_layer: str
    stem_kernel: int
    stem_stride: int
    stem_max_pool: bool
    blocks: tuple[BlockSpec, ...]
    head_layer: str | None  # MobileNetV2's final 1x1 conv; None for ResNets
    layers: tuple[LayerSpec, ...]
    ties: tuple[tuple[str, ...], ...]
    gate_threshold_range: tuple[float, float] = (0.1, 0.9)
    route_threshold_range: tuple[float, float] = (0.05, 0.95)
    default_resolution: int = 224
    head_dim: int | None = None  # ViT: width of one attention head (attention widths are whole heads)
    _by_name: dict[str, LayerSpec] = field(init=False, repr=False, compare=False)
    _decision_of: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {layer.name: layer for layer in self.layers}
        decision_of = {name: name for name in by_name}
        for group in self.ties:
            for name in group:
                decision_of[name] = group[0]
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_decision_of", decision_of)
        self._check_router_groups()

    # -- lookups -----------------------------------------------------------------------------
    def layer(self, name: str) -> LayerSpec:
        return self._by_name[name]

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def gated_blocks(self) -> tuple[BlockSpec, ...]:
        return tuple(block for block in self.blocks if block.gated)

    # -- width routing (DS-Net's dynamic width; supernet.nn.routing) ------------------------------
    @property
    def router_blocks(self) -> tuple[str, ...]:
        """Blocks with a width router in front: every block that changes resolution (ResNets, MobileNetV2).

        A router reads the pooled features entering its block and picks, per input, one width for its
        group: the blocks from it up to the next router (the last group also holds the head layer).
        The blocks before the first router run at the config's widths. ViTs have no routers.
        """
        if self.family == "vit":
            return ()
        return tuple(block.name for block in self.blocks if block.stride > 1)

    @property
    def router_groups(self) -> dict[str, tuple[str, ...]]:
        """Router block -> the searchable layers whose width it sets (inner, output, shortcut; the head last)."""
        groups: dict[str, list[str]] = {}
        current: list[str] | None = None
        routers = set(self.router_blocks)
        for block in self.blocks:
            if block.name in routers:
                current = groups.setdefault(block.name, [])
            if current is not None:
                current.extend([*block.inner_layers, block.out_layer, *([block.shortcut_layer] if block.shortcut_layer else [])])
        if current is not None and self.head_layer is not None:
            current.append(self.head_layer)
        return {name: tuple(layers) for name, layers in groups.items()}

    def route_widths(self, cfg: SubnetConfig, levels: Mapping[str, float]) -> SubnetConfig:
        """The static config of one route of routed (or any) ``cfg``: each router group in ``levels`` at the
        width choice nearest ``multiplier x max channels``, capped by ``cfg``'s own width (the widest route).

        ``levels``: router block -> width multiplier; groups not named keep ``cfg``'s widths.
        """
        channels = dict(cfg.channels)
        groups = self.router_groups
        for router, multiplier in levels.items():
            if router not in groups:
                raise ConfigError(f"route: {router!r} is not a router block; router blocks: {list(self.router_blocks)}")
            for name in groups[router]:
                spec = self.layer(name)
                target = spec.max_channels * multiplier
                nearest = min(spec.width_choices, key=lambda c: (abs(c - target), c))
                channels[name] = min(nearest, cfg.channels[name])
        return SubnetConfig(cfg.space, channels, None, cfg.resolution)

    def _check_router_groups(self) -> None:
        """Each tie group lies within one router group (or before the first router): a route sets whole ties."""
        if not self.layers:
            return
        group_of = {layer: router for router, layers in self.router_groups.items() for layer in layers}
        for tie in self.ties:
            owners = {group_of.get(name) for name in tie}
            if len(owners) > 1:
                raise ValueError(f"search space {self.name}: tie group {tie} spans router groups {sorted(map(str, owners))}")

    @property
    def decisions(self) -> dict[str, tuple[str, ...]]:
        """Independent width decisions: representative layer name -> the layers it sets."""
        groups: dict[str, list[str]] = {}
        for name in self.layer_names:
            groups.setdefault(self._decision_of[name], []).append(name)
        return {key: tuple(names) for key, names in groups.items()}

    @property
    def num_subnets(self) -> int:
        """Number of distinct width configurations (gate thresholds are continuous, not counted)."""
        return math.prod(len(self.layer(key).width_choices) for key in self.decisions)

    # -- configs -----------------------------------------------------------------------------
    def config(
        self,
        channels: Mapping[str, int],
        gate_thresholds: Mapping[str, float] | None = None,
        resolution: int | None = None,
        route_thresholds: Mapping[str, float] | None = None,
    ) -> SubnetConfig:
        """Build and validate a config of this space."""
        cfg = SubnetConfig(
            space=self.name,
            channels=dict(channels),
            gate_thresholds=None if gate_thresholds is None else dict(gate_thresholds),
            resolution=self.default_resolution if resolution is None else resolution,
            route_thresholds=None if route_thresholds is None else dict(route_thresholds),
        )
        self.validate(cfg)
        return cfg

    def from_decisions(
        self,
        widths: Mapping[str, int],
        gate_thresholds: Mapping[str, float] | float | None = None,
        resolution: int | None = None,
        route_thresholds: Mapping[str, float] | float | None = None,
    ) -> SubnetConfig:
        """Config from one width per decision (tie groups expanded); a float threshold applies to all gates
        (or all routers)."""
        unknown = set(widths) - set(self.decisions)
        if unknown:
            raise ConfigError(f"widths: unknown decision(s) {sorted(unknown)}; expected {sorted(self.decisions)}")
        channels = {name: widths[self._decision_of[name]] for name in self.layer_names}
        if isinstance(gate_thresholds, (int, float)) and not isinstance(gate_thresholds, bool):
            gate_thresholds = {block.name: float(gate_thresholds) for block in self.gated_blocks}
        if isinstance(route_thresholds, (int, float)) and not isinstance(route_thresholds, bool):
            route_thresholds = {name: float(route_thresholds) for name in self.router_blocks}
        return self.config(channels, gate_thresholds, resolution, route_thresholds)

    def max_config(self, gate_threshold: float | None = None) -> SubnetConfig:
        return self.from_decisions({k: self.layer(k).width_choices[-1] for k in self.decisions}, gate_threshold)

    def min_config(self, gate_threshold: float | None = None, *, min_multiplier: float = 0.0) -> SubnetConfig:
        """Every layer at its smallest width choice of at least ``min_multiplier`` times its maximum."""
        widths = {k: self._allowed_widths(k, min_multiplier)[0] for k in self.decisions}
        return self.from_decisions(widths, gate_threshold)

    def uniform_config(self, multiplier: float, gate_threshold: float | None = None) -> SubnetConfig:
        """Every layer at the width choice nearest to ``multiplier`` times its maximum."""
        if not 0.0 < multiplier <= 1.0:
            raise ConfigError(f"multiplier: {multiplier} is out of range; expected 0 < multiplier <= 1")
        widths = {}
        for key in self.decisions:
            spec = self.layer(key)
            target = spec.max_channels * multiplier
            widths[key] = min(spec.width_choices, key=lambda c: (abs(c - target), c))
        return self.from_decisions(widths, gate_threshold)

    def sample(
        self,
        rng: np.random.Generator,
        *,
        gates: bool = False,
        min_multiplier: float = 0.0,
    ) -> SubnetConfig:
        """A uniformly random width per decision (choices below ``min_multiplier`` excluded).

        With ``gates=True`` each gated block gets a threshold uniform in the space's range.
        """
        widths = {}
        for key in self.decisions:
            allowed = self._allowed_widths(key, min_multiplier)
            widths[key] = int(allowed[rng.integers(len(allowed))])
        thresholds = None
        if gates and self.gated_blocks:
            low, high = self.gate_threshold_range
            thresholds = {block.name: float(rng.uniform(low, high)) for block in self.gated_blocks}
        return self.from_decisions(widths, thresholds)

    def _allowed_widths(self, decision: str, min_multiplier: float) -> tuple[int, ...]:
        spec = self.layer(decision)
        allowed = tuple(c for c in spec.width_choices if c >= spec.max_channels * min_multiplier - 1e-9)
        return allowed or (spec.max_channels,)

    def validate(self, cfg: SubnetConfig) -> None:
        """Raise :class:`ConfigError` naming the offending field if ``cfg`` is not in this space."""
        if cfg.space != self.name:
            raise ConfigError(f"space: config is for {cfg.space!r}, expected {self.name!r}")
        unknown = sorted(set(cfg.channels) - set(self.layer_names))
        if unknown:
            raise ConfigError(f"channels[{unknown[0]!r}]: unknown layer; valid layers: {list(self.layer_names)}")
        missing = [name for name in self.layer_names if name not in cfg.channels]
        if missing:
            raise ConfigError(f"channels[{missing[0]!r}]: missing; every searchable layer needs a width")
        for name, channels in cfg.channels.items():
            choices = self.layer(name).width_choices
            if channels not in choices:
                raise ConfigError(f"channels[{name!r}]: {channels} is not a width choice; allowed: {list(choices)}")
        for group in self.ties:
            widths = {cfg.channels[name] for name in group}
            if len(widths) > 1:
                detail = ", ".join(f"{name}={cfg.channels[name]}" for name in group)
                raise ConfigError(f"channels[{group[-1]!r}]: tied widths differ ({detail}); a tie group shares one width")
        if cfg.gate_thresholds is not None:
            _check_thresholds("gate_thresholds", cfg.gate_thresholds, [b.name for b in self.gated_blocks],
                              self.gate_threshold_range, what="gated block", missing_hint="every gated block")
        if cfg.route_thresholds is not None:
            if not self.router_blocks:
                raise ConfigError(f"route_thresholds: the {self.family} space {self.name} has no width routers; use null")
            first = self.router_blocks[0]
            if first not in cfg.route_thresholds:
                raise ConfigError(f"route_thresholds[{first!r}]: missing; the first router decides for the blocks "
                                  "behind it; give it a threshold (later routers may be left out) or use null")
            _check_thresholds("route_thresholds", cfg.route_thresholds, list(self.router_blocks),
                              self.route_threshold_range, what="router block", missing_hint=None)

    def narrow(self, channels: Mapping[str, int]) -> SearchSpace:
        """A space whose maximum is ``channels`` (any positive counts): the shape of an extracted network."""
        layers = tuple(
            LayerSpec(layer.name, int(channels[layer.name]), (int(channels[layer.name]),)) for layer in self.layers
        )
        return replace(self, layers=layers)


def _check_thresholds(key: str, thresholds: Mapping[str, float], blocks: list[str], bounds: tuple[float, float], *,
                      what: str, missing_hint: str | None) -> None:
    """Thresholds only for blocks of ``blocks`` (one for every block unless ``missing_hint`` is None), each within
    ``bounds``; else a :class:`ConfigError` naming it."""
    unknown = sorted(set(thresholds) - set(blocks))
    if unknown:
        raise ConfigError(f"{key}[{unknown[0]!r}]: not a {what}; {what}s: {blocks}")
    missing = [name for name in blocks if name not in thresholds]
    if missing and missing_hint is not None:
        raise ConfigError(f"{key}[{missing[0]!r}]: missing; give {missing_hint} a threshold or use null")
    low, high = bounds
    for name, threshold in thresholds.items():
        if not low <= threshold <= high:
            raise ConfigError(f"{key}[{name!r}]: {threshold} is out of range; allowed: [{low}, {high}]")
