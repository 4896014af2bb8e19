"""What a sub-network costs: fvcore FLOPs (one multiply-add = one flop), effective FLOPs, parameters.

:func:`measure_costs` is the one place the search, the export and the evaluation measure them, so
a config costs the same wherever it is reported. Latency is measured by :mod:`nas.latency.measure`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from search_spaces import SubnetConfig
from supernet.nn.flops import (
    FLOP_CONVENTION,
    count_flops,
    count_params,
    effective_flops,
    static_flops,
)
from supernet.nn.models import SuperNet

__all__ = ["FLOP_CONVENTION", "Costs", "count_flops", "count_params", "effective_flops", "measure_costs", "static_flops"]


@dataclass(frozen=True)
class Costs:
    flops: int  # static: every channel kept, the gates' own cost counted
    effective_flops: float  # mean per input with gates on; equals flops when gates are off
    params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_costs(
    network: SuperNet, cfg: SubnetConfig, calibration: torch.Tensor, *, resolution: int, batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Costs:
    """The costs of ``network`` (extracted for ``cfg``) at ``resolution``.

    A gated network's effective FLOPs are the mean over the ``calibration`` images (N, 3, R, R) of
    each input's FLOPs, so its BatchNorm (the gates' included) must already be recalibrated; a
    static network's effective FLOPs are its FLOPs and ``calibration`` is not read.
    """
    flops = count_flops(network, resolution)
    effective = float(flops)
    if cfg.gated:
        batches = [batch.to(device) for batch in calibration.split(batch_size)]
        effective = effective_flops(network, batches, resolution=resolution)
    return Costs(flops=flops, effective_flops=effective, params=count_params(network))
