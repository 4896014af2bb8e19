"""Group regularisation (US3L: Cao et al., CVPR 2023, "Three Guidelines You Should Know for
Universally Slimmable Self-Supervised Learning"), used instead of weight decay.

A sub-network of width ``c`` uses a layer's first ``c`` output channels, so the first channels are
trained by every sub-network and the last ones only by the widest. The output channels of each
conv / linear / BN layer are cut into ``groups`` contiguous groups; group ``i`` gets the L2
coefficient ``base * (1 - alpha * i)``. The later groups see fewer gradient updates (only wide
sub-networks reach them), so uniform weight decay would shrink them relative to the shared ones
and weaken the wide networks; decaying them less keeps their scale. ``alpha`` is ramped by the loop
(``supernet.schedules.group_alpha``).

Use: build the optimiser with ``weight_decay=0`` for the parameters covered here and call
:func:`apply_group_decay` after ``loss.backward()`` (and after any DDP gradient all-reduce, which
``backward`` already did) and before ``optimizer.step()``.
"""

from __future__ import annotations

import torch
from torch import nn

# Layers whose weight's dim 0 indexes output channels. SyncBatchNorm (what DDP conversion yields) is
# not a BatchNorm2d subclass, so it is listed itself.
_DECAYED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
)


def group_coefficients(num_channels: int, base: float, alpha: float, groups: int = 8) -> torch.Tensor:
    """Per-output-channel L2 coefficients, shape ``(num_channels,)``, float32.

    Channel ``c`` is in group ``i = c * groups // num_channels`` (contiguous; group 0 holds the first
    channels, shared by every sub-network) and gets ``base * (1 - alpha * i)``. With fewer channels
    than groups some groups are empty; every channel still falls in ``0 .. groups - 1``.

    Example:
        >>> group_coefficients(4, 1.0, 0.1, groups=2)
        tensor([1.0000, 1.0000, 0.9000, 0.9000])
    """
    if num_channels <= 0:
        raise ValueError(f"num_channels must be > 0, got {num_channels}")
    if groups <= 0:
        raise ValueError(f"groups must be > 0, got {groups}")
    if alpha < 0 or alpha * (groups - 1) > 1:
        raise ValueError(
            f"alpha must be in [0, 1/(groups-1)] so no coefficient is negative; got alpha={alpha}, groups={groups}"
        )
    group_index = torch.arange(num_channels, dtype=torch.long) * groups // num_channels
    return (base * (1.0 - alpha * group_index.to(torch.float64))).to(torch.float32)


def _decayed_weights(module: nn.Module) -> list[nn.Parameter]:
    """Weights (never biases) of the covered layers in ``module``, each once."""
    seen: set[int] = set()
    weights: list[nn.Parameter] = []
    for layer in module.modules():
        if not isinstance(layer, _DECAYED_LAYERS):
            continue
        weight = getattr(layer, "weight", None)  # None for BN with affine=False
        if isinstance(weight, nn.Parameter) and id(weight) not in seen:
            seen.add(id(weight))
            weights.append(weight)
    return weights


def _coefficients_like(weight: torch.Tensor, base: float, alpha: float, groups: int) -> torch.Tensor:
    """Coefficients shaped to broadcast over ``weight`` (C_out, ...)."""
    coefficients = group_coefficients(weight.shape[0], base, alpha, groups)
    return coefficients.to(device=weight.device, dtype=weight.dtype).reshape(-1, *([1] * (weight.ndim - 1)))


@torch.no_grad()
def apply_group_decay(module: nn.Module, base: float, alpha: float, groups: int = 8) -> None:
    """Add ``coef[c] * w[c]`` to the gradient of every covered weight, in place.

    Covered: the ``weight`` of every ``nn.Conv2d``, ``nn.Linear`` and BatchNorm (1d/2d/3d, Sync)
    layer in ``module``, subclasses included (the supernet's dynamic ops). Biases, BN biases and
    other parameters are left alone; a weight whose ``grad`` is ``None`` (unused this step, or
    frozen) is skipped. Like SGD's ``weight_decay`` this is an L2 gradient kept out of the loss
    value; it equals the gradient of :func:`group_decay_penalty`.
    """
    for weight in _decayed_weights(module):
        if weight.grad is None:
            continue
        weight.grad.add_(_coefficients_like(weight, base, alpha, groups) * weight)


def group_decay_penalty(module: nn.Module, base: float, alpha: float, groups: int = 8) -> torch.Tensor:
    """``0.5 * sum_layers sum_c coef[c] * ||w_c||^2`` over the weights :func:`apply_group_decay`
    covers; its gradient is exactly what that function adds. A scalar tensor (for logging or tests)."""
    terms = [
        0.5 * (_coefficients_like(weight, base, alpha, groups) * weight.square()).sum()
        for weight in _decayed_weights(module)
    ]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()
