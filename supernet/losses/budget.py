"""Compute-budget losses for dynamic channel gates (Krishna et al., 2023, "Dynamic computation
and self-supervised learning"; gates trained jointly with the dense network from scratch).

Two terms keep the gated network near a target FLOPs ratio ``t_d`` (as in the authors' code,
KrishnaTarun/Unification, ``solo/losses/regularization_channel.py``):

* a global term ``lambda * (FLOPs_gated / FLOPs_full - t_d)^2`` with ``lambda = 5``, the ratio of
  the batch-mean gated FLOPs (the gates' own cost included) to the dense FLOPs;
* per-layer density bounds around ``sqrt(t_d)`` (the density of a layer whose input and output are
  both pruned to ``sqrt(t_d)`` costs about ``t_d``): ``[p sqrt(t), 1 - p + p sqrt(t)]`` with
  ``p = exp(-0.02 * epoch)``, refreshed once per epoch. At epoch 0 they are tight at ``sqrt(t_d)``,
  so every layer starts near the target density; they relax toward [0, 1] as training proceeds,
  leaving the global term to allocate compute between layers. The squared hinge is averaged over
  layers. The epoch is a schedule owned by the training loop and passed in here.
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
        full_flops: FLOPs of the same (active-width) network with every gate open; a float (the
            training loop's, counted on the host) or a scalar tensor, treated as a constant. A tensor on
            an accelerator is not checked for positivity: that would read it back, a host sync per step.
        target: the target ratio ``t_d`` in [0, 1].
        weight: ``lambda``; 5 in Krishna et al.

    Returns:
        A scalar tensor; 0 exactly when the batch's mean ratio equals ``target``. Its gradient w.r.t.
        ``gated_flops`` has the sign of ``ratio - target``, so descent moves the ratio to ``target``.
    """
    _check_target(target)
    if gated_flops.ndim != 1 or gated_flops.numel() == 0:
        raise ValueError(f"gated_flops must be a non-empty (B,) tensor; got shape {tuple(gated_flops.shape)}")
    # No host-to-device copy of a Python number and no device read: this runs at every gated step.
    if isinstance(full_flops, torch.Tensor):
        if full_flops.numel() != 1 or (full_flops.device.type == "cpu" and not bool(full_flops > 0)):
            raise ValueError(f"full_flops must be a single positive number, got {full_flops}")
        full: float | torch.Tensor = full_flops.detach().reshape(()).to(gated_flops.dtype)
    else:
        if not full_flops > 0:
            raise ValueError(f"full_flops must be a single positive number, got {full_flops}")
        full = float(full_flops)
    ratio = gated_flops.mean() / full
    return weight * (ratio - target) ** 2


def density_bounds(target: float, epoch: float, rate: float = DENSITY_ANNEALING_RATE) -> tuple[float, float]:
    """Per-layer density bounds ``(lower, upper)`` in ``epoch`` (its integer part counts, as in the original).

    With ``p = exp(-rate * floor(epoch))`` and ``s = sqrt(target)``: ``lower = p * s``,
    ``upper = 1 - p + p * s``. At epoch 0 both are ``s``; they relax toward (0, 1).

    >>> density_bounds(0.25, 0)
    (0.5, 0.5)
    """
    _check_target(target)
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    relax = math.exp(-rate * math.floor(epoch))
    layer_target = math.sqrt(target)
    return relax * layer_target, 1.0 - relax + relax * layer_target


def density_bound_loss(densities: torch.Tensor, lower: float, upper: float, weight: float = 1.0) -> torch.Tensor:
    """``weight * (mean_l relu(lower - d_l)^2 + mean_l relu(d_l - upper)^2)``: zero inside the bounds.

    Args:
        densities: ``(L,)`` mean fraction of kept channels of each gated layer over the batch.
        lower: lower density bound, from :func:`density_bounds`.
        upper: upper density bound, ``>= lower``.
        weight: ``gamma``; 1 in Krishna et al.

    Returns:
        A scalar tensor.
    """
    if lower > upper:
        raise ValueError(f"lower bound {lower} exceeds upper bound {upper}")
    if densities.ndim != 1 or densities.numel() == 0:
        raise ValueError(f"densities must be a non-empty (L,) tensor; got shape {tuple(densities.shape)}")
    return weight * ((F.relu(lower - densities) ** 2).mean() + (F.relu(densities - upper) ** 2).mean())
