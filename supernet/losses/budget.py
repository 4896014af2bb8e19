"""Compute-budget losses for dynamic channel gates (Krishna et al., 2023, "Dynamic computation
and self-supervised learning"; gates trained jointly with the dense network from scratch).

Two terms keep the gated network near a target FLOPs ratio ``t_d``:

* a global term ``lambda * (FLOPs_gated / FLOPs_full - t_d)^2`` with ``lambda = 5``;
* per-layer density bounds that start at [0, 1] (free) and tighten toward ``t_d`` as
  ``a = exp(-0.02 * epoch)`` decays, so no single layer collapses to 0 or stays fully dense while
  the global ratio is met. The epoch is a schedule owned by the training loop
  (``supernet.schedules.gate_epoch``) and passed in here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BUDGET_LOSS_WEIGHT = 5.0
DENSITY_ANNEALING_RATE = 0.02


def _check_target(target: float) -> None:
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target FLOPs/density ratio must be in [0, 1], got {target}")


def flops_budget_loss(
    gated_flops: torch.Tensor, full_flops: float | torch.Tensor, target: float, weight: float = BUDGET_LOSS_WEIGHT
) -> torch.Tensor:
    """``weight * (mean_b(gated_flops_b) / full_flops - target)^2``.

    Args:
        gated_flops: ``(B,)`` effective FLOPs of each input under its gate mask, differentiable
            w.r.t. the gates (e.g. through the straight-through masks).
        full_flops: FLOPs of the same (active-width) network with every gate open; a float or a
            scalar tensor, treated as a constant.
        target: the target ratio ``t_d`` in [0, 1].
        weight: ``lambda``; 5 in Krishna et al.

    Returns:
        A scalar tensor; 0 exactly when the batch's mean ratio equals ``target``. Its gradient w.r.t.
        ``gated_flops`` has the sign of ``ratio - target``, so descent moves the ratio to ``target``.
    """
    _check_target(target)
    if gated_flops.ndim != 1 or gated_flops.numel() == 0:
        raise ValueError(f"gated_flops must be a non-empty (B,) tensor; got shape {tuple(gated_flops.shape)}")
    full = torch.as_tensor(full_flops, dtype=gated_flops.dtype, device=gated_flops.device).detach()
    if full.numel() != 1 or not bool(full > 0):
        raise ValueError(f"full_flops must be a single positive number, got {full_flops}")
    ratio = gated_flops.mean() / full.reshape(())
    return weight * (ratio - target) ** 2


def density_bounds(target: float, epoch: float, rate: float = DENSITY_ANNEALING_RATE) -> tuple[float, float]:
    """Per-layer density bounds ``(lower, upper)`` at ``epoch`` (may be fractional).

    With ``a = exp(-rate * epoch)``: ``lower = target * (1 - a)``, ``upper = target + (1 - target) * a``.
    At epoch 0 they are (0, 1); both converge to ``target`` (a = 0.13 after 100 epochs at rate 0.02).
    """
    _check_target(target)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    annealing = math.exp(-rate * epoch)
    return target * (1.0 - annealing), target + (1.0 - target) * annealing


def density_bound_loss(densities: torch.Tensor, lower: float, upper: float) -> torch.Tensor:
    """``sum_l relu(d_l - upper)^2 + relu(lower - d_l)^2``: zero inside the bounds, quadratic outside.

    Args:
        densities: ``(L,)`` mean fraction of kept channels of each gated layer over the batch.
        lower: lower density bound, from :func:`density_bounds`.
        upper: upper density bound, ``>= lower``.

    Returns:
        A scalar tensor.
    """
    if lower > upper:
        raise ValueError(f"lower bound {lower} exceeds upper bound {upper}")
    if densities.ndim != 1:
        raise ValueError(f"densities must be (L,); got shape {tuple(densities.shape)}")
    return (F.relu(densities - upper) ** 2 + F.relu(lower - densities) ** 2).sum()
