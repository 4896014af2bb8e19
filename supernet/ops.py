"""Slicing ops: convolution, BatchNorm and linear layers that compute only their active channels.

Following US-Nets (Yu & Huang 2019), a sub-network of width ``c`` uses the first ``c`` filters of a
layer: ``weight[:out, :in]``. The input width is read off the input tensor, so only the output
width is state (``active_out``, set by the supernet). Nothing is computed at full width and masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DynamicConv2d(nn.Conv2d):
    """``nn.Conv2d`` computing ``active_out`` output channels from however many input channels arrive.

    A depthwise conv (``groups == in_channels == out_channels``) follows its input width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        if groups not in (1, in_channels) or (groups > 1 and in_channels != out_channels):
            raise ValueError("DynamicConv2d supports dense (groups=1) and depthwise convs only")
        self.depthwise = groups > 1
        self.active_out = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in', H, W) -> (B, C_out', H', W')
        in_channels = x.shape[1]
        if self.depthwise:
            weight, groups, out_channels = self.weight[:in_channels], in_channels, in_channels
        else:
            weight, groups, out_channels = self.weight[: self.active_out, :in_channels], 1, self.active_out
        bias = None if self.bias is None else self.bias[:out_channels]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the first ``C'`` channels of its parameters and running statistics.

    Running statistics are shared by all widths (US-Nets recalibrates them per sub-network after
    training, see :func:`supernet.bn.recalibrate_bn`); updates write into the active prefix only.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            # momentum=None: cumulative moving average, as nn.BatchNorm2d does
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        return F.batch_norm(
            x,
            None if self.running_mean is None else self.running_mean[:channels],
            None if self.running_var is None else self.running_var[:channels],
            None if self.weight is None else self.weight[:channels],
            None if self.bias is None else self.bias[:channels],
            use_batch_stats,
            factor,
            self.eps,
        )


class DynamicLinear(nn.Linear):
    """``nn.Linear`` reading the first ``C'`` input features; ``active_out`` output features."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.active_out = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in') -> (B, C_out')
        weight = self.weight[: self.active_out, : x.shape[-1]]
        bias = None if self.bias is None else self.bias[: self.active_out]
        return F.linear(x, weight, bias)


def batch_norm_select(bn: nn.BatchNorm2d, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Inference BatchNorm over the channels ``index`` of ``bn`` (x holds exactly those channels)."""
    return F.batch_norm(
        x,
        bn.running_mean.index_select(0, index),
        bn.running_var.index_select(0, index),
        bn.weight.index_select(0, index),
        bn.bias.index_select(0, index),
        False,
        0.0,
        bn.eps,
    )
