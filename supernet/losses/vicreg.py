"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun, ICLR 2022).

Three terms on the expander outputs ``Z, Z'`` (n rows, d dimensions) of two views, without
negatives, a predictor or a momentum encoder:

* invariance ``s(Z, Z') = mean_{b,k} (z_bk - z'_bk)^2`` (the mean squared error over every entry,
  as the authors' code computes it with ``F.mse_loss``);
* variance ``v(Z) = mean_k relu(gamma - sqrt(Var(z_k) + eps))`` with gamma = 1, eps = 1e-4 (the
  unbiased variance over the batch): a hinge that keeps every dimension's std at least gamma;
* covariance ``c(Z) = sum_{k != l} C(Z)_kl^2 / d`` with ``C`` the batch covariance: decorrelates
  the dimensions.

The loss is ``lambda s(Z, Z') + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))`` with
lambda = mu = 25 and nu = 1 (the paper's weights; the /2 on the variance term and none on the
covariance term follow the authors' code, facebookresearch/vicreg ``main_vicreg.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VICREG_INVARIANCE_WEIGHT = 25.0
VICREG_VARIANCE_WEIGHT = 25.0
VICREG_COVARIANCE_WEIGHT = 1.0
VICREG_STD_TARGET = 1.0  # gamma
VICREG_EPS = 1e-4


def _check_rows(z: torch.Tensor) -> None:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"embeddings must be (B, D) with B >= 2; got {tuple(z.shape)}")


def vicreg_invariance(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """``mean_{b,k} (z_a - z_b)^2`` for two ``(B, D)`` embeddings of the same images.

    >>> vicreg_invariance(torch.zeros(2, 2), torch.ones(2, 2))
    tensor(1.)
    """
    _check_rows(z_a)
    if z_a.shape != z_b.shape:
        raise ValueError(f"z_a and z_b must have the same shape; got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    return F.mse_loss(z_a.float(), z_b.float())


def vicreg_variance(z: torch.Tensor, *, std_target: float = VICREG_STD_TARGET, eps: float = VICREG_EPS) -> torch.Tensor:
    """``mean_k relu(std_target - sqrt(Var_b(z_bk) + eps))`` for a ``(B, D)`` embedding; 0 once every std >= target.

    >>> round(float(vicreg_variance(torch.tensor([[0.0, 0.0], [0.0, 4.0]]))), 4)  # stds 0.01 and 2.83: (1 - 0.01) / 2
    0.495
    """
    _check_rows(z)
    std = torch.sqrt(z.float().var(dim=0) + eps)
    return F.relu(std_target - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """``sum_{k != l} Cov(z)_kl^2 / D`` for a ``(B, D)`` embedding (unbiased batch covariance).

    >>> float(vicreg_covariance(torch.tensor([[1.0, 1.0], [-1.0, -1.0]])))  # Cov = [[2, 2], [2, 2]]: 2 * 4 / 2
    4.0
    """
    _check_rows(z)
    centred = z.float() - z.float().mean(dim=0)
    covariance = centred.T @ centred / (z.shape[0] - 1)
    off_diagonal = covariance - torch.diag_embed(torch.diagonal(covariance))
    return off_diagonal.pow(2).sum() / z.shape[1]


def vicreg_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    *,
    invariance_weight: float = VICREG_INVARIANCE_WEIGHT,
    variance_weight: float = VICREG_VARIANCE_WEIGHT,
    covariance_weight: float = VICREG_COVARIANCE_WEIGHT,
) -> torch.Tensor:
    """The weighted VICReg loss of two ``(B, D)`` expander outputs (both sides get gradient).

    ``invariance_weight * s(z_a, z_b) + variance_weight * (v(z_a) + v(z_b)) / 2
    + covariance_weight * (c(z_a) + c(z_b))``; equal to lightly's ``VICRegLoss``.

    Example:
        >>> z = torch.randn(8, 4)
        >>> bool(vicreg_loss(z, z) == 25 * vicreg_variance(z) + 2 * vicreg_covariance(z))
        True
    """
    invariance = vicreg_invariance(z_a, z_b)
    variance = (vicreg_variance(z_a) + vicreg_variance(z_b)) / 2
    covariance = vicreg_covariance(z_a) + vicreg_covariance(z_b)
    return invariance_weight * invariance + variance_weight * variance + covariance_weight * covariance
