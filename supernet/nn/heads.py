"""Projection and prediction MLPs of the self-supervised methods (BYOL, Grill et al. 2020).

The first layer is a :class:`DynamicLinear`, so one projector serves every sub-network: it reads
the first C' features of whatever width the encoder produced.
"""

from __future__ import annotations

from torch import nn

from supernet.nn.ops import DynamicBatchNorm1d, DynamicLinear


class MLPHead(nn.Sequential):
    """Linear -> BN -> ReLU -> Linear: (B, C') -> (B, out_dim), C' <= in_dim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            DynamicLinear(in_dim, hidden_dim, bias=False),
            DynamicBatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
