"""Projection and prediction MLPs of the self-supervised methods (BYOL, Grill et al. 2020; MoCo v3, Chen et al. 2021).

The first layer is a :class:`DynamicLinear`, so one projector serves every sub-network: it reads
the first C' features of whatever width the encoder produced.
"""

from __future__ import annotations

from torch import nn

from supernet.nn.ops import DynamicBatchNorm1d, DynamicLinear


class MLPHead(nn.Sequential):
    """(Linear -> BN -> ReLU) x (layers - 1) -> Linear: (B, C') -> (B, out_dim), C' <= in_dim.

    ``layers=2`` is BYOL's head (and lightly's ``BYOLProjectionHead``); ``layers=3`` adds a hidden
    layer, as US3L's CIFAR projector (512 -> 2048 -> 2048 -> 2048) and SimCLR v2 do.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, layers: int = 2) -> None:
        if layers < 2:
            raise ValueError(f"MLPHead: layers={layers}; expected at least 2")
        blocks: list[nn.Module] = [DynamicLinear(in_dim, hidden_dim, bias=False), DynamicBatchNorm1d(hidden_dim),
                                   nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            blocks += [nn.Linear(hidden_dim, hidden_dim, bias=False), DynamicBatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        super().__init__(*blocks, nn.Linear(hidden_dim, out_dim))


class BatchNormMLP(nn.Sequential):
    """MoCo v3's heads (``moco/builder.py``: ``MoCo._build_mlp``): (B, C') -> (B, out_dim), C' <= in_dim.

    (Linear -> BN -> ReLU) x (layers - 1) -> Linear, every Linear without bias; with
    ``last_batch_norm`` a BatchNorm *without affine parameters* follows the last Linear (SimCLR v2's
    design, its scale parameter removed). moco-v3's projectors end so (3 layers for ViTs, 2 for
    ResNets), as does its ViT predictor; its ResNet predictor has no last BN.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, layers: int, last_batch_norm: bool) -> None:
        if layers < 2:
            raise ValueError(f"BatchNormMLP: layers={layers}; expected at least 2")
        blocks: list[nn.Module] = [DynamicLinear(in_dim, hidden_dim, bias=False), DynamicBatchNorm1d(hidden_dim),
                                   nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            blocks += [nn.Linear(hidden_dim, hidden_dim, bias=False), DynamicBatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(hidden_dim, out_dim, bias=False))
        if last_batch_norm:
            blocks.append(DynamicBatchNorm1d(out_dim, affine=False))
        super().__init__(*blocks)
