"""Group regularisation (US3L: Cao et al., CVPR 2023, "Three Guidelines You Should Know for
Universally Slimmable Self-Supervised Learning"), used instead of weight decay on the encoder.

A sub-network of width ``c`` uses a layer's first ``c`` channels, so the first channels are trained
by every sub-network and the last ones only by the widest. Each parameter is cut into ``groups``
bins of channels; bin ``i`` gets the L2 coefficient ``base * (1 - alpha * i)``: the later bins see
fewer gradient updates (only wide sub-networks reach them), so uniform weight decay would shrink
them relative to the shared ones. ``alpha`` is ramped by the loop (:func:`supernet.training.schedules.group_alpha`).

Which parameters and which channels, as US3L's code computes it:

* CNN encoders (``losses/regularizers/GroupReg.py``): every 4-d weight (convolutions) and every 1-d
  parameter (BatchNorm weights and biases) is binned along dim 0, the output channels; 2-d (linear)
  weights take the plain coefficient ``base``.
* ViT encoders (``GroupRegularizer`` in ``ViT_experiments/main_moco_ofa_ddp.py``): 2-d (linear)
  weights are binned along dim 1, their input features; every other parameter takes ``base``.

Bins hold ``C // groups`` channels each and the last one the remainder; with fewer channels than
bins every channel is in the last bin (the same arithmetic as US3L's mask loop). US3L adds
``lambda * ||w||^2`` to the loss, a gradient of ``2 * lambda * w``; here ``base`` is that ``2 * lambda``
(``regularization.weight_decay``), added to the gradients after backward. Not reproduced: US3L
also regularises the projection heads (their 1-d parameters binned); here the heads' weights take
the optimizer's plain weight decay and their 1-d parameters none. ``alpha`` ramps per step (US3L:
per epoch).

Use: build the optimizer with no weight decay on the encoder, build a :class:`GroupDecay` over the
encoder once, and call :meth:`GroupDecay.apply` after the gradients are complete (all-reduced) and
before ``optimizer.step()``. Its coefficients live on the parameters' device and are combined with
``torch._foreach_*`` kernels, so it never copies from the host.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GroupDecay", "apply_group_decay", "channel_bins", "group_coefficients"]


def channel_bins(num_channels: int, groups: int = 8) -> torch.Tensor:
    """The bin of each of ``num_channels`` channels, shape ``(num_channels,)``, int64.

    ``min(c // (num_channels // groups), groups - 1)``; every channel in bin ``groups - 1`` when there
    are fewer channels than bins.

    Example:
        >>> channel_bins(10, groups=4).tolist()
        [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]
    """
    if num_channels <= 0:
        raise ValueError(f"num_channels must be > 0, got {num_channels}")
    if groups <= 0:
        raise ValueError(f"groups must be > 0, got {groups}")
    width = num_channels // groups
    if width == 0:
        return torch.full((num_channels,), groups - 1, dtype=torch.long)
    return (torch.arange(num_channels) // width).clamp(max=groups - 1)


def group_coefficients(num_channels: int, base: float, alpha: float, groups: int = 8) -> torch.Tensor:
    """Per-channel L2 coefficients ``base * (1 - alpha * bin)``, shape ``(num_channels,)``, float32.

    Example:
        >>> group_coefficients(4, 1.0, 0.1, groups=2)
        tensor([1.0000, 1.0000, 0.9000, 0.9000])
    """
    _check_alpha(alpha, groups)
    return (base * (1.0 - alpha * channel_bins(num_channels, groups).to(torch.float64))).to(torch.float32)


def _check_alpha(alpha: float, groups: int) -> None:
    if alpha < 0 or alpha * (groups - 1) > 1:
        raise ValueError(
            f"alpha must be in [0, 1/(groups-1)] so no coefficient is negative; got alpha={alpha}, groups={groups}"
        )


def _bins_like(param: torch.Tensor, family: str, groups: int) -> torch.Tensor:
    """Bins shaped to broadcast over ``param`` (a 0-d zero where the parameter is not binned)."""
    if family == "vit":
        if param.ndim == 2:
            return channel_bins(param.shape[1], groups).view(1, -1)
    elif param.ndim in (1, 4):
        return channel_bins(param.shape[0], groups).view(-1, *([1] * (param.ndim - 1)))
    return torch.zeros((), dtype=torch.long)


class GroupDecay:
    """US3L's group L2 over the parameters of ``encoder`` that train, bins computed once.

    ``family``: ``"vit"`` for ViT encoders, anything else bins as a CNN (see the module docstring).
    """

    def __init__(self, encoder: nn.Module, *, groups: int = 8, family: str = "cnn") -> None:
        self.groups = groups
        self.params = [p for p in encoder.parameters() if p.requires_grad]
        self.bins = [_bins_like(p, family, groups).to(device=p.device, dtype=p.dtype) for p in self.params]

    def coefficients(self, base: float, alpha: float) -> list[torch.Tensor]:
        """``base * (1 - alpha * bin)`` per parameter, broadcastable over it."""
        _check_alpha(alpha, self.groups)
        coefficients = torch._foreach_mul(self.bins, -alpha * base)
        torch._foreach_add_(coefficients, base)
        return coefficients

    @torch.no_grad()
    def apply(self, base: float, alpha: float) -> None:
        """``grad += coefficient * w`` for every parameter with a gradient (unused ones are skipped)."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        coefficients = self.coefficients(base, alpha)
        for i in live:
            self.params[i].grad.addcmul_(coefficients[i], self.params[i])

    def penalty(self, base: float, alpha: float) -> torch.Tensor:
        """``0.5 * sum coefficient * w^2``: the loss whose gradient :meth:`apply` adds (logging, tests)."""
        terms = [0.5 * (c * p.square()).sum() for c, p in zip(self.coefficients(base, alpha), self.params)]
        return torch.stack(terms).sum() if terms else torch.zeros(())


def apply_group_decay(module: nn.Module, base: float, alpha: float, groups: int = 8, *, family: str = "cnn") -> None:
    """One-off :meth:`GroupDecay.apply` over ``module`` (the training loop keeps a :class:`GroupDecay`)."""
    GroupDecay(module, groups=groups, family=family).apply(base, alpha)
