"""Dynamic channel gates (Krishna et al. 2023, "Dynamic computation + SSL").

Per residual block: global average pool -> 1x1 conv (C -> C/4) -> BN -> ReLU -> 1x1 conv (-> the
block's inner channels) -> one logit per channel. Inference keeps a channel when its probability
sigmoid(logit) reaches the block's threshold t. Training samples a hard 0/1 mask with the
Gumbel-sigmoid straight-through estimator (logistic noise, tau = 2/3) on the logits shifted by
logit(t), so without noise it keeps exactly what inference keeps; at t = 0.5 (no shift) this is
Krishna et al.'s rule, and training at other thresholds prepares the gates for the ones the search
tries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from supernet.nn.ops import DynamicBatchNorm2d, DynamicConv2d

GUMBEL_TEMPERATURE = 2.0 / 3.0
# Krishna et al.'s gates have no bias and Kaiming-initialised weights: about half the channels start
# open. A positive bias starts them mostly open (sigmoid(2) ~ 0.88).
INITIAL_GATE_BIAS = 0.0


def gumbel_sigmoid_straight_through(
    logits: torch.Tensor, *, temperature: float = GUMBEL_TEMPERATURE, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Hard {0, 1} sample of sigmoid gates whose gradient is that of the relaxed sample.

    ``logits``: any shape. Noise is logistic, log(u) - log(1 - u), u ~ U(0, 1), drawn and added in
    float32 whatever the logits' dtype: bfloat16 uniforms (autocast's logits) come in steps of 2**-8,
    which cut the noise's tails at about +-5.5 (a logit of -6 would never keep its channel, where
    sigmoid(-6) = 0.25 % of draws should). The sample is returned in the logits' dtype.
    """
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    uniform = uniform.clamp(1e-6, 1.0 - 1e-6)
    soft = torch.sigmoid((logits.float() + torch.log(uniform) - torch.log1p(-uniform)) / temperature)
    hard = (soft >= 0.5).to(soft.dtype)
    # (soft - soft.detach()) is exactly 0, so the value is exactly hard; `hard + soft - soft` is not
    # (1 + s - s rounds to 1 - 2**-24 for some s in float32)
    return (hard + (soft - soft.detach())).to(logits.dtype)


@dataclass(frozen=True)
class GateOptions:
    """How a supernet's gates are built: the logit bias they start from, and whether the blocks keep
    a separate set of BatchNorms for gated passes (Krishna et al.'s ``--separate_bn``)."""

    init_bias: float = INITIAL_GATE_BIAS
    separate_norms: bool = False


class ChannelGate(nn.Module):
    """Per-input keep/drop decision for ``gated_channels`` channels from the block input.

    ``fc2.active_out`` (set by the supernet) is the block's active inner width; the hidden width is
    fixed. ``forward(x, threshold)``: (B, C_in', H, W) -> mask (B, C_inner') in {0, 1}.
    """

    def __init__(self, in_channels: int, hidden_channels: int, gated_channels: int, *,
                 init_bias: float = INITIAL_GATE_BIAS) -> None:
        super().__init__()
        self.fc1 = DynamicConv2d(in_channels, hidden_channels, 1)
        self.bn = DynamicBatchNorm2d(hidden_channels)
        self.fc2 = DynamicConv2d(hidden_channels, gated_channels, 1, bias=True)
        self.init_bias = init_bias

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.fc1.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.constant_(self.fc2.bias, self.init_bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in', H, W) -> (B, C_inner')
        pooled = F.adaptive_avg_pool2d(x, 1)
        return self.fc2(F.relu(self.bn(self.fc1(pooled)))).flatten(1)

    def forward(self, x: torch.Tensor, threshold: float) -> torch.Tensor:
        logits = self.logits(x)
        if self.training:
            return gumbel_sigmoid_straight_through(logits - math.log(threshold / (1.0 - threshold)))
        return (torch.sigmoid(logits) >= threshold).to(x.dtype)
