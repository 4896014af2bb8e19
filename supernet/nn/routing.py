"""Width routing: per input, each group of blocks runs one contiguous slice of the supernet's channels.

DS-Net (Li et al., CVPR 2021) made a slimmable network dynamic by letting a small gate pick, per input,
one of a few widths for the rest of the network; every kernel then runs dense on a channel prefix
``weight[:w]``, so the saving is wall-clock time, not only counted FLOPs (per-channel masks, as
:mod:`supernet.nn.gates`, compute every channel unless hardware skips them). Here a router sits in front of
every block that changes resolution (:attr:`search_spaces.SearchSpace.router_blocks`); it reads the pooled
features entering its block and picks a width *level* for its group of blocks (up to the next router).

* Levels are width multipliers of the space's maximum, ascending, the last 1.0 (:class:`RouterSet`); level
  ``m`` of a routed config sets each layer of the group to the width choice nearest ``m x max``, capped by
  the config's own width, so the config's ``channels`` are its widest route
  (:meth:`search_spaces.SearchSpace.route_widths`).
* A router predicts, for every level but the widest, the probability that the level *suffices* for this input
  (its embedding still identifies the image as the full-width teacher sees it; trained without labels by
  :mod:`supernet.training.routing`). Decision at threshold ``t``: the narrowest level whose probability reaches
  ``t``, else the widest (:func:`route_levels`), read as logit >= log(t / (1 - t)) (:func:`logit_threshold`)
  so that no sigmoid runs at inference. The threshold is the searched knob: one trained router serves every
  cost. A router block given no threshold runs no router: its group keeps the level chosen before it. With the
  first router alone, one decision per input sets the whole network's width (DS-Net's released models gate one
  stage and carry its choice on); every router trains on the same uniform-route targets, so either use is
  what it learned.
* :class:`RoutedNetwork` is the deployed form of one routed config: the blocks before the first router, and
  for every router a branch per (incoming width, level) holding its own sliced weights and BatchNorm, so an
  input routed to levels ``(a, b, ...)`` runs exactly the static sub-network of that route
  (:meth:`RoutedNetwork.route_config`), and the network's features are the route's, zero-padded to the widest
  route's width (the projector's first layer reads a narrower embedding the same way). A batch runs as groups
  of equal route, each group dense.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import SearchSpace, SubnetConfig, UserError
from supernet.nn.ops import DynamicLinear

__all__ = ["DEFAULT_LEVELS", "RouterHead", "RouterSet", "RoutedNetwork", "RoutingError", "WidthRouter", "check_levels",
           "head_key", "levels_problem", "logit_threshold", "route_levels", "router_key", "segments_of"]

DEFAULT_LEVELS: tuple[float, ...] = (0.25, 0.5, 1.0)
PieceCall = Callable[[str, nn.Module, torch.Tensor], torch.Tensor]


class RoutingError(UserError):
    """Routing settings or a routed config that cannot work; one line naming the setting."""


def levels_problem(levels: Sequence[float]) -> str | None:
    """What valid width levels would be, if ``levels`` are not (None if they are): a settings rule."""
    values = [float(level) for level in levels]
    valid = (len(values) >= 2 and values[-1] == 1.0 and all(0.0 < v <= 1.0 for v in values)
             and all(a < b for a, b in zip(values, values[1:])))
    return None if valid else "two or more ascending width multipliers in (0, 1] ending at 1.0, e.g. [0.25, 0.5, 1.0]"


def check_levels(levels: Sequence[float], *, key: str = "routing.levels") -> tuple[float, ...]:
    """``levels`` as a tuple if they are valid width levels (:func:`levels_problem`); else one line."""
    problem = levels_problem(levels)
    if problem is not None:
        raise RoutingError(f"{key}: {[float(level) for level in levels]} are not width levels; expected {problem}")
    return tuple(float(level) for level in levels)


def router_key(block: str) -> str:
    """``layer2.0`` -> ``layer2_0``: a block name as a ``ModuleDict`` key."""
    return block.replace(".", "_")


def head_key(block: str, in_channels: int) -> str:
    """``router_layer2_0_in32``: the router of ``block`` for inputs of ``in_channels`` channels."""
    return f"router_{router_key(block)}_in{in_channels}"


def logit_threshold(threshold: float) -> float:
    """The logit a router's output must reach for a probability ``threshold`` in (0, 1): log(t / (1 - t)),
    rounded to float32, the precision logits are compared in. sigmoid is increasing, so ``logit >= this`` is the
    decision ``sigmoid(logit) >= t`` without running a sigmoid (the same rule on every path: the batch, one
    input read on the host, the exported runner).

    >>> logit_threshold(0.5)
    0.0
    """
    if not 0.0 < threshold < 1.0:
        raise RoutingError(f"route threshold {threshold} is not a probability in (0, 1)")
    return float(torch.tensor(math.log(threshold) - math.log1p(-threshold), dtype=torch.float32))


def route_levels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Level index (B,) per input from a router's logits (B, K - 1): the narrowest level whose probability of
    sufficing reaches ``threshold`` (its logit reaches :func:`logit_threshold`), else the widest (K - 1). Ties
    cannot arise: the narrowest qualifying level is taken.

    >>> route_levels(torch.tensor([[2.0, 3.0], [-2.0, 3.0], [-2.0, -3.0]]), 0.5).tolist()
    [0, 1, 2]
    """
    suffices = logits.float() >= logit_threshold(threshold)
    narrowest = suffices.to(torch.int8).argmax(dim=1)  # the first True; 0 when none is True
    return torch.where(suffices.any(dim=1), narrowest, torch.full_like(narrowest, logits.shape[1]))


class WidthRouter(nn.Module):
    """Global average pool -> linear (C' -> hidden) -> ReLU -> linear (-> K - 1 logits).

    Input (B, C', H, W) with C' <= ``in_channels`` (the first linear layer reads the first C' weights, as the
    projector does); output (B, K - 1): logit that level j (narrow to wide, the widest excluded) suffices.
    No BatchNorm: a router decides on one image at a time.
    """

    def __init__(self, in_channels: int, hidden_channels: int, num_levels: int) -> None:
        super().__init__()
        self.fc1 = DynamicLinear(in_channels, hidden_channels)
        self.fc2 = nn.Linear(hidden_channels, num_levels - 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decide(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def decide(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits (B, K - 1) from already pooled features (B, C')."""
        return self.fc2(F.relu(self.fc1(pooled)))


class RouterHead(nn.Module):
    """A :class:`WidthRouter` fixed to one input width and spatial size, as a routed network runs it: its first
    layer's weights sliced to the first ``in_channels`` once (contiguous), no slicing per call, its two layers
    called as functions, not modules, and the global average pool as a product with a constant vector of
    ``1 / spatial`` (``mean_weights``; counted as the pool's multiply-adds). At batch 1 every op costs more than its
    arithmetic, and more between convolutions than alone in a loop, so one input runs as three matrix-vector
    products (pool, first layer with its bias, second layer with its bias) and an in-place ReLU: RESULTS §17.
    Inputs of another spatial size are pooled with ``mean``."""

    def __init__(self, router: WidthRouter, in_channels: int, spatial: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, router.fc1.out_features)
        self.fc2 = nn.Linear(router.fc2.in_features, router.fc2.out_features)
        self.register_buffer("mean_weights", torch.full((spatial,), 1.0 / spatial))
        with torch.no_grad():
            self.fc1.weight.copy_(router.fc1.weight[:, :in_channels])
            self.fc1.bias.copy_(router.fc1.bias)
            self.fc2.load_state_dict(router.fc2.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K - 1)
        fc1, fc2, mean = self.fc1, self.fc2, self.mean_weights
        if x.shape[2] * x.shape[3] != mean.shape[0]:
            pooled = x.mean((2, 3))
        elif x.shape[0] == 1:
            return self._one(x).unsqueeze(0)
        else:
            pooled = torch.matmul(x.flatten(2), mean)
        return F.linear(torch.relu(F.linear(pooled, fc1.weight, fc1.bias)), fc2.weight, fc2.bias)

    def decide_one(self, x: torch.Tensor) -> list[float]:
        """The logits of one input (1, C, H, W) on the host: ``forward(x)[0].tolist()`` without the batch axis."""
        if x.shape[2] * x.shape[3] != self.mean_weights.shape[0]:
            return self(x)[0].tolist()
        return self._one(x).tolist()

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H, W) -> (K - 1,): three matrix-vector products (pool, each layer with its bias), the fewest ops."""
        fc1, fc2 = self.fc1, self.fc2
        flat = x.view(x.shape[1], -1) if x.is_contiguous() else x.reshape(x.shape[1], -1)
        return torch.addmv(fc2.bias, fc2.weight, torch.addmv(fc1.bias, fc1.weight, torch.mv(flat, self.mean_weights)).relu_())


class RouterSet(nn.Module):
    """One :class:`WidthRouter` per router block of a space, and the width levels they choose among.

    ``routers[router_key(block)]`` reads the features entering ``block``; ``levels`` are ascending width
    multipliers ending at 1.0 (the widest route is the config itself).
    """

    def __init__(self, space: SearchSpace, *, levels: Sequence[float] = DEFAULT_LEVELS, hidden_channels: int = 64) -> None:
        super().__init__()
        if not space.router_blocks:
            raise RoutingError(f"routing: the {space.family} space {space.name} has no router blocks; "
                               "width routing needs a ResNet or MobileNetV2 space")
        self.space_name = space.name
        self.levels = check_levels(levels)
        self.hidden_channels = hidden_channels
        blocks = {block.name: block for block in space.blocks}
        self.blocks = space.router_blocks
        self.routers = nn.ModuleDict({
            router_key(name): WidthRouter(space.layer(blocks[name].in_layer).max_channels, hidden_channels,
                                          len(self.levels))
            for name in self.blocks
        })

    def router(self, block: str) -> WidthRouter:
        return self.routers[router_key(block)]  # type: ignore[return-value]

    def settings(self) -> dict[str, object]:
        """What rebuilds this set (with its ``state_dict``): stored in checkpoints and exports."""
        return {"space": self.space_name, "levels": list(self.levels), "hidden_channels": self.hidden_channels}

    @classmethod
    def from_settings(cls, space: SearchSpace, settings: Mapping[str, object]) -> RouterSet:
        if settings.get("space") != space.name:
            raise RoutingError(f"routing: routers trained for {settings.get('space')!r} do not fit the {space.name} supernet")
        return cls(space, levels=settings["levels"], hidden_channels=int(settings["hidden_channels"]))  # type: ignore[arg-type]

    @classmethod
    def from_record(cls, space: SearchSpace, record: Mapping[str, Any]) -> RouterSet:
        """The routers a checkpoint's ``routers`` record holds (its ``settings`` and ``state``)."""
        routers = cls.from_settings(space, record["settings"])
        routers.load_state_dict(record["state"])
        return routers


# -- the network as segments ----------------------------------------------------------------------------
def segments_of(network: nn.Module, space: SearchSpace) -> list[nn.Sequential]:
    """``network`` (a ResNet or MobileNetV2 :class:`supernet.nn.models.SuperNet`, or one extracted from it) as
    ``1 + len(space.router_blocks)`` consecutive segments sharing its modules: the stem and the blocks before
    the first router, then each router's group (the last one with MobileNetV2's head conv). Running them in
    order, then pooling, is ``network.forward_features``."""
    modules = dict(network.named_modules())
    if space.family == "resnet":
        stem: list[nn.Module] = [modules["conv1"], modules["bn1"], modules["relu"], modules["maxpool"]]
        head: list[nn.Module] = []
    elif space.family == "mobilenet_v2":
        assert space.head_layer is not None
        stem, head = [modules["features.0"]], [modules[space.head_layer.rsplit(".", 1)[0]]]
    else:
        raise RoutingError(f"routing: the {space.family} family has no width routers")
    routers = set(space.router_blocks)
    segments: list[list[nn.Module]] = [stem]
    for block in space.blocks:
        if block.name in routers:
            segments.append([])
        segments[-1].append(modules[block.name])
    segments[-1].extend(head)
    return [nn.Sequential(*parts) for parts in segments]


class RoutedNetwork(nn.Module):
    """The routed sub-network of one config: the prefix, the routers, and a branch for every route prefix.

    ``forward(x)``: (B, 3, R, R) -> (B, D) pooled features of each input's route, zero-padded to D, the widest
    route's feature width. After a forward, :attr:`last_levels` (B, number of routers) holds each input's level
    indices. Built with :meth:`build` (weights sliced out of a supernet). A branch is one router group at one
    level behind one sequence of upstream levels: branches with the same widths share their weights, and each
    keeps its own BatchNorm statistics, which depend on every width upstream of it. :meth:`recalibrate` sets
    them as :func:`supernet.nn.bn.recalibrate_bn` sets a static network's, so an input routed to levels
    ``(a, b, ...)`` runs exactly the recalibrated static sub-network of that route (:meth:`route_config`).
    """

    def __init__(self, space: SearchSpace, cfg: SubnetConfig, routers: RouterSet, prefix: nn.Module,
                 branches: Mapping[str, nn.Module], branch_of: Mapping[tuple[int, ...], str],
                 widths_of: Mapping[tuple[int, ...], int], prefix_width: int, spatial: Sequence[int]) -> None:
        """``routers``: the trained routers; each is run as a :class:`RouterHead` per input width it can receive
        (``heads``, keyed ``<router>_in<channels>``). ``spatial``: H x W of the features entering each router at the
        config's resolution."""
        super().__init__()
        if not cfg.routed:
            raise RoutingError("RoutedNetwork: the config has no route_thresholds")
        self.space, self.config, self.levels = space, cfg, routers.levels
        self.router_blocks = space.router_blocks
        given = cfg.route_thresholds or {}
        # None: that router does not run, its group keeps the level before it (see decides)
        self.thresholds = tuple(float(given[name]) if name in given else None for name in self.router_blocks)
        self.logit_thresholds = tuple(None if t is None else logit_threshold(t) for t in self.thresholds)
        self.prefix = prefix
        self.routers = routers
        self.branches = nn.ModuleDict(dict(branches))
        self.branch_of = dict(branch_of)  # route prefix (level indices) -> key of its branch in ``branches``
        self.widths_of = dict(widths_of)  # route prefix -> channels its last branch outputs
        self.prefix_width = prefix_width
        self.feature_dim = max(width for route, width in self.widths_of.items() if len(route) == len(self.router_blocks))
        widths = {(): prefix_width, **self.widths_of}
        self.heads = nn.ModuleDict({
            head_key(name, width): RouterHead(routers.router(name), width, spatial[depth])
            for depth, name in enumerate(self.router_blocks) if self.decides(depth)
            for width in sorted({w for route, w in widths.items() if len(route) == depth})
        })
        # (router depth, input channels) -> key of its head, so that one input's forward formats no strings
        self._head_keys = {(depth, width): head_key(name, width) for depth, name in enumerate(self.router_blocks)
                           if self.decides(depth) for width in set(widths.values())}
        self._taken = _Taken()

    @property
    def last_levels(self) -> torch.Tensor | None:
        """Level indices (B, number of routers) of each input of the last forward (None before any)."""
        return self._taken.levels()

    def decides(self, depth: int) -> bool:
        """Whether router ``depth`` runs (has a threshold); if not, its group keeps the level before it."""
        return self.thresholds[depth] is not None

    def head(self, depth: int, in_channels: int) -> RouterHead:
        """The router in front of group ``depth``, for inputs of ``in_channels`` channels."""
        return self.heads[head_key(self.router_blocks[depth], in_channels)]  # type: ignore[return-value]

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def build(cls, supernet: nn.Module, routers: RouterSet, cfg: SubnetConfig) -> RoutedNetwork:
        """Slice ``cfg``'s routed network out of ``supernet`` (a :class:`supernet.nn.models.SuperNet`); the
        routers are copied. BatchNorm statistics are the supernet's until :meth:`recalibrate`."""
        space: SearchSpace = supernet.space  # type: ignore[assignment]
        space.validate(cfg)
        if not cfg.routed:
            raise RoutingError("route_thresholds: null; a routed network needs a threshold per router block")
        if routers.space_name != space.name:
            raise RoutingError(f"routing: routers of {routers.space_name!r} do not fit the {space.name} supernet")
        count, levels = len(space.router_blocks), routers.levels
        out_layers = _segment_out_layers(space)
        groups = [space.router_groups[name] for name in space.router_blocks]
        upstream_layers = [name for name in space.layer_names if not any(name in group for group in groups)]
        branches: dict[str, nn.Module] = {}
        by_weights: dict[tuple[int, ...], nn.Module] = {}
        shared: dict[tuple[object, ...], nn.Parameter] = {}
        branch_of: dict[tuple[int, ...], str] = {}
        widths_of: dict[tuple[int, ...], int] = {}
        prefix: nn.Module | None = None
        deciding = [name in cfg.route_thresholds for name in space.router_blocks]
        for route in _route_prefixes(count, len(levels), deciding):
            segment = len(route)  # the branch of router ``segment - 1``'s group at level route[-1]
            route_cfg = space.route_widths(cfg, {space.router_blocks[i]: levels[level] for i, level in enumerate(route)})
            widths = route_cfg.channels
            in_width = widths[out_layers[segment - 1]]
            own = tuple(widths[name] for name in groups[segment - 1])
            # what the branch's BatchNorm statistics depend on: every width up to and including its own group
            signature = (segment, *(widths[name] for name in upstream_layers),
                         *(widths[name] for group in groups[:segment] for name in group))
            key = f"segment{segment}_" + hashlib.sha1(repr(signature).encode()).hexdigest()[:12]
            branch_of[route], widths_of[route] = key, widths[out_layers[segment]]
            if key in branches:
                continue
            weights_key = (segment, in_width, *own)
            if weights_key in by_weights:  # same widths behind other upstream widths: own statistics only
                branches[key] = _copy_buffers(by_weights[weights_key])
                continue
            pieces = segments_of(supernet.extract(route_cfg).eval(), space)  # type: ignore[operator]
            if prefix is None:
                prefix = pieces[0]
            branches[key] = by_weights[weights_key] = _share_parameters(pieces[segment], segment, shared)
        assert prefix is not None
        prefix_width = cfg.channels[out_layers[0]]
        with torch.no_grad():  # H x W entering each router (the same on every route: widths keep the resolution)
            hidden = prefix(torch.zeros(1, 3, cfg.resolution, cfg.resolution, device=next(prefix.parameters()).device))
            spatial = [hidden.shape[2] * hidden.shape[3]]
            for depth in range(1, count):
                hidden = branches[branch_of[(len(levels) - 1,) * depth]](hidden)
                spatial.append(hidden.shape[2] * hidden.shape[3])
        return cls(space, cfg, copy.deepcopy(routers), prefix, branches, branch_of, widths_of, prefix_width,
                   spatial).eval()

    # -- running ------------------------------------------------------------------------------------------
    input_dependent = True  # what an input costs depends on its route (latency is the mean over inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            return self._run_one(x, None)
        return self.run_pieces(x, lambda key, module, inputs: module(inputs))

    def run_pieces(self, x: torch.Tensor, call: PieceCall) -> torch.Tensor:
        """The routed forward with every piece run as ``call(key, module, inputs) -> outputs``: the prefix
        (``"prefix"``), each router head (its key in :attr:`heads`) and each branch (its key in :attr:`branches`). Plain
        calls are :meth:`forward`; a runtime's programs per piece run it as deployed (:mod:`nas.latency.programs`).
        """
        if x.shape[0] == 1:
            return self._run_one(x, call)
        features = x.new_zeros((x.shape[0], self.feature_dim))
        levels = torch.zeros((x.shape[0], len(self.router_blocks)), dtype=torch.long)
        rows = torch.arange(x.shape[0])
        for group_rows, route, hidden in self._groups(call("prefix", self.prefix, x), rows, (), call):
            pooled = torch.flatten(F.adaptive_avg_pool2d(hidden, 1), 1).to(features.device, features.dtype)
            features[group_rows.to(features.device), : pooled.shape[1]] = pooled
            levels[group_rows] = torch.tensor(route)
        self._taken.record_batch(levels)
        return features

    def _run_one(self, x: torch.Tensor, call: PieceCall | None) -> torch.Tensor:
        """:meth:`run_pieces` of one input: each decision read on the host as it is made (no grouping to do), as
        route_levels makes it: the first logit at or above the threshold's logit. ``call=None`` (:meth:`forward`):
        the pieces called directly, each router through :meth:`RouterHead.decide_one`; at 1 ms a network notices
        every op and module call a router adds (RESULTS §17)."""
        plain = call is None
        hidden, route = self.prefix(x) if plain else call("prefix", self.prefix, x), ()  # type: ignore[misc]
        for segment, threshold in enumerate(self.logit_thresholds):
            if threshold is None:  # no router here: the level before holds
                route = (*route, route[-1])
            else:
                key = self._head_keys[segment, hidden.shape[1]]
                head: RouterHead = self.heads[key]  # type: ignore[assignment]
                logits = head.decide_one(hidden) if plain else call(key, head, hidden).tolist()[0]  # type: ignore[misc]
                level = len(logits)  # the router's one host sync is above
                for j, logit in enumerate(logits):
                    if logit >= threshold:
                        level = j
                        break
                route = (*route, level)
            key = self.branch_of[route]
            hidden = self.branches[key](hidden) if plain else call(key, self.branches[key], hidden)  # type: ignore[misc]
        self._taken.record_one(route)
        pooled = torch.flatten(F.adaptive_avg_pool2d(hidden, 1), 1)
        return F.pad(pooled, (0, self.feature_dim - pooled.shape[1])) if pooled.shape[1] < self.feature_dim else pooled

    def _groups(self, hidden: torch.Tensor, rows: torch.Tensor, route: tuple[int, ...], call: PieceCall
                ) -> Iterator[tuple[torch.Tensor, tuple[int, ...], torch.Tensor]]:
        """(rows, route, output) of every group of inputs of equal route, below ``hidden`` at ``route``."""
        segment = len(route)
        if segment == len(self.router_blocks):
            yield rows, route, hidden
            return
        if not self.decides(segment):  # no router here: the whole group keeps its level
            key = self.branch_of[(*route, route[-1])]
            yield from self._groups(call(key, self.branches[key], hidden), rows, (*route, route[-1]), call)
            return
        key = head_key(self.router_blocks[segment], hidden.shape[1])
        logits = call(key, self.heads[key], hidden)
        chosen = route_levels(logits, self.thresholds[segment]).cpu()  # the router's one host sync
        present = chosen.unique().tolist()
        for level in present:
            if len(present) == 1:
                part, part_rows = hidden, rows
            else:
                mask = chosen == level
                part, part_rows = hidden[mask.to(hidden.device)], rows[mask]
            key = self.branch_of[(*route, level)]
            yield from self._groups(call(key, self.branches[key], part), part_rows, (*route, level), call)

    @torch.no_grad()
    def entering(self, x: torch.Tensor, route: Sequence[int]) -> torch.Tensor:
        """Features entering router ``len(route)`` (or the pooling, after the last) with the upstream routers
        forced to the levels ``route`` (eval): what that router reads on such a path."""
        hidden = self.prefix(x)
        for depth in range(1, len(route) + 1):
            hidden = self.branches[self.branch_of[tuple(route[:depth])]](hidden)
        return hidden

    def route_features(self, x: torch.Tensor, route: Sequence[int]) -> torch.Tensor:
        """Pooled features (B, C_route) of every input of ``x`` sent down ``route`` (a full route, no routers run):
        the route's static sub-network's features."""
        return torch.flatten(F.adaptive_avg_pool2d(self.entering(x, route), 1), 1)

    def route_network(self, route: Sequence[int]) -> nn.Sequential:
        """The route's static sub-network, assembled from this network's modules (shared, not copied):
        prefix, the route's branches, pooling. Its FLOPs are the route's."""
        branches = [self.branches[self.branch_of[tuple(route[:depth])]] for depth in range(1, len(route) + 1)]
        network = nn.Sequential(self.prefix, *branches, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        network.training = self.training  # the wrapper only: whoever restores its mode restores this network's
        return network

    def router_heads(self, route: Sequence[int]) -> list[RouterHead]:
        """The router heads an input taking ``route`` runs, in order (the routers that decide)."""
        widths = [self.prefix_width, *(self.widths_of[tuple(route[:depth])] for depth in range(1, len(route)))]
        return [self.head(depth, width) for depth, width in enumerate(widths) if self.decides(depth)]

    def router_inputs(self, x: torch.Tensor, route: Sequence[int]) -> list[torch.Tensor]:
        """What each router that decides reads along ``route`` for inputs ``x`` (eval): one tensor per head of
        :meth:`router_heads`."""
        hidden, seen = self.prefix(x), []
        for depth, level in enumerate(route):
            if self.decides(depth):
                seen.append(hidden)
            hidden = self.branches[self.branch_of[tuple(route[: depth + 1])]](hidden)
        return seen

    # -- what a route is ---------------------------------------------------------------------------------
    def route_config(self, levels: Sequence[int]) -> SubnetConfig:
        """The static config of the route with these level indices (one per router)."""
        return self.space.route_widths(self.config, {name: self.levels[level]
                                                      for name, level in zip(self.router_blocks, levels)})

    def routes(self) -> list[tuple[int, ...]]:
        """Every route an input can take (level index per router group), narrowest first."""
        return [route for route in _all_routes(len(self.router_blocks), len(self.levels)) if route in self.branch_of]

    # -- BatchNorm ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def recalibrate(self, images: torch.Tensor, *, num_images: int | None = None, batch_size: int = 256,
                    seed: int = 0, device: torch.device | str | None = None) -> RoutedNetwork:
        """Re-estimate every BatchNorm as :func:`supernet.nn.bn.recalibrate_bn` does for a static network.

        The same ``num_images`` images (drawn with ``seed``), in the same batches, go down every route: per
        batch the prefix runs once and each branch once, in training mode, so every branch's statistics are
        those its route's static sub-network gets from ``recalibrate_bn`` (a cumulative average over the
        batches; a trailing batch of one image is dropped, as there). Left in eval mode.
        """
        device = torch.device(device) if device is not None else next(self.parameters()).device
        count = len(images) if num_images is None else min(num_images, len(images))
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
        norms = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [norm.momentum for norm in norms]
        self.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        try:
            for start in range(0, count, batch_size):
                batch = images[order[start : start + batch_size]].to(device)
                if batch.shape[0] == 1 and start > 0:
                    break
                self._calibrate_below(self.prefix(batch), (), set())
        finally:
            for norm, momentum in zip(norms, saved):
                norm.momentum = momentum
            self.eval()
        return self

    def _calibrate_below(self, hidden: torch.Tensor, route: tuple[int, ...], seen: set[str]) -> None:
        if len(route) == len(self.router_blocks):
            return
        for level in range(len(self.levels)) if self.decides(len(route)) else (route[-1],):
            key = self.branch_of[(*route, level)]
            if key in seen:  # the same widths behind the same upstream widths: already run for this batch
                continue
            seen.add(key)
            self._calibrate_below(self.branches[key](hidden), (*route, level), seen)


class _Taken:
    """The routes of a routed network's last forward, kept outside the module's attributes (an ``nn.Module``
    attribute set per forward costs microseconds a 1 ms network notices): a batch's levels (B, R), or one
    input's route as a tuple, made a tensor only when asked for."""

    __slots__ = ("batch", "one")

    def __init__(self) -> None:
        self.batch: torch.Tensor | None = None
        self.one: tuple[int, ...] | None = None

    def record_batch(self, levels: torch.Tensor) -> None:
        self.batch, self.one = levels, None

    def record_one(self, route: tuple[int, ...]) -> None:
        self.batch, self.one = None, route

    def levels(self) -> torch.Tensor | None:
        return torch.tensor([self.one]) if self.one is not None else self.batch


def _copy_buffers(module: nn.Module) -> nn.Module:
    """A copy of ``module`` holding the same parameters and its own buffers (BatchNorm statistics)."""
    return copy.deepcopy(module, memo={id(p): p for p in module.parameters()})


def _share_parameters(module: nn.Module, segment: int, shared: dict[tuple[object, ...], nn.Parameter]) -> nn.Module:
    """Make ``module``'s parameters the ones already held under the same (segment, name, shape), if any: slices of
    the same supernet tensor with the same shape hold the same values (a layer behind a narrower input differs
    only in the layers that read that input)."""
    for name, parameter in list(module.named_parameters()):
        key = (segment, name, tuple(parameter.shape))
        if key not in shared:
            shared[key] = parameter
            continue
        owner_name, _, attribute = name.rpartition(".")
        setattr(module.get_submodule(owner_name) if owner_name else module, attribute, shared[key])
    return module


def _segment_out_layers(space: SearchSpace) -> list[str]:
    """The layer whose width each segment outputs (what the next one reads): segment 0 first."""
    routers = set(space.router_blocks)
    outs: list[str] = []
    previous = space.stem_layer
    for block in space.blocks:
        if block.name in routers:
            outs.append(previous)
        previous = block.out_layer
    outs.append(space.head_layer or previous)
    return outs


def _all_routes(count: int, num_levels: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of ``count`` level indices, in lexicographic order."""
    if count == 0:
        yield ()
        return
    for head in _all_routes(count - 1, num_levels):
        for level in range(num_levels):
            yield (*head, level)


def _route_prefixes(count: int, num_levels: int, deciding: Sequence[bool]) -> Iterator[tuple[int, ...]]:
    """Route prefixes of length 1..count an input can take: one per branch (its upstream levels and its own). A
    router that does not decide (``deciding[depth]`` False) repeats the level before it."""
    for length in range(1, count + 1):
        for route in _all_routes(length, num_levels):
            if all(route[depth] == route[depth - 1] for depth in range(1, length) if not deciding[depth]):
                yield route

