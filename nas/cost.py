"""What a sub-network costs: fvcore FLOPs (one multiply-add = one flop), effective FLOPs, parameters.

:func:`measure_costs` is the one place the search, the export and the evaluation measure them, so
a config costs the same wherever it is reported. Latency is measured by :mod:`nas.latency.measure`.

A routed network's FLOPs (``flops``) are its widest route's with every router; its effective FLOPs the mean
over the calibration images of each image's: its route's static sub-network plus the routers it ran
(:func:`routed_input_flops`), which is fvcore's count of the routed forward of that one image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from collections.abc import Callable

from search_spaces import SubnetConfig
from supernet.nn.routing import RoutedNetwork
from supernet.nn.flops import (
    FLOP_CONVENTION,
    count_flops,
    count_params,
    effective_flops,
    static_flops,
)
from supernet.nn.models import SuperNet

__all__ = ["FLOP_CONVENTION", "Costs", "count_flops", "count_params", "effective_flops", "measure_costs", "routed_input_flops",
           "static_flops"]


@dataclass(frozen=True)
class Costs:
    flops: int  # static: every channel kept, the gates' own cost counted
    effective_flops: float  # mean per input with gates on; equals flops when gates are off
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_costs(
    network: SuperNet | RoutedNetwork, cfg: SubnetConfig, calibration: torch.Tensor, *, resolution: int,
    batch_size: int = 256, device: torch.device | str = "cpu", route_flops: Callable[[SubnetConfig], int] | None = None,
) -> Costs:
    """The costs of ``network`` (extracted for ``cfg``, or its :class:`RoutedNetwork`) at ``resolution``.

    A gated or routed network's effective FLOPs are the mean over the ``calibration`` images (N, 3, R, R) of
    each input's FLOPs, so its BatchNorm (the gates' included) must already be recalibrated; a
    static network's effective FLOPs are its FLOPs and ``calibration`` is not read. ``route_flops``: the
    FLOPs of a route's static config (default: fvcore on the route's network; pass a cached count).
    """
    if isinstance(network, RoutedNetwork):
        per_input = routed_input_flops(network, calibration, route_flops=route_flops, batch_size=batch_size,
                                       device=device)
        widest = tuple(len(network.levels) - 1 for _ in network.router_blocks)
        flops = (route_flops(network.route_config(widest)) if route_flops else count_flops(network.route_network(widest), resolution)) + \
            _router_flops(network, calibration[:1].to(device), widest)
        params = count_params(network.route_network(widest)) + sum(count_params(h) for h in network.router_heads(widest))
        return Costs(flops=int(flops), effective_flops=float(per_input.mean()), params=params)
    flops = count_flops(network, resolution)
    effective = float(flops)
    if cfg.gated:
        batches = [batch.to(device) for batch in calibration.split(batch_size)]
        effective = effective_flops(network, batches, resolution=resolution)
    return Costs(flops=flops, effective_flops=effective, params=count_params(network))


@torch.no_grad()
def routed_input_flops(network: RoutedNetwork, images: torch.Tensor, *,
                       route_flops: Callable[[SubnetConfig], int] | None = None, batch_size: int = 256,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) FLOPs of each image of ``images`` through the routed ``network``: its route's static sub-network
    (``route_flops`` of the route's config; default fvcore on :meth:`RoutedNetwork.route_network`) plus the
    routers on its way (fvcore, pooling included)."""
    network.eval()
    levels = []
    for start in range(0, len(images), batch_size):
        network(images[start : start + batch_size].to(device))
        levels.append(network.last_levels.cpu())  # type: ignore[union-attr]
    routes = torch.cat(levels)
    example = images[:1].to(device)
    per_input = torch.empty(len(routes), dtype=torch.float64)
    for route in {tuple(row) for row in routes.tolist()}:
        static = route_flops(network.route_config(route)) if route_flops else \
            count_flops(network.route_network(route), inputs=example)
        per_input[(routes == torch.tensor(route)).all(dim=1)] = float(static + _router_flops(network, example, route))
    return per_input


def _router_flops(network: RoutedNetwork, example: torch.Tensor, route: tuple[int, ...]) -> int:
    """fvcore FLOPs of the routers an input running ``route`` passes (each reading what enters its block)."""
    entering = network.router_inputs(example, route)
    total = 0
    for head, x in zip(network.router_heads(route), entering):
        key = (tuple(head.fc1.weight.shape), tuple(head.fc2.weight.shape), tuple(x.shape[1:]))  # not the image's
        if key not in _ROUTER_FLOPS:
            _ROUTER_FLOPS[key] = count_flops(head, inputs=x)
        total += _ROUTER_FLOPS[key]
    return total


_ROUTER_FLOPS: dict[tuple[object, ...], int] = {}
