"""Regression losses between embeddings: BYOL's normalised MSE and US3L's negative cosine.

Both are pure functions of ``(B, D)`` tensors. The target side is *not* detached here: the caller
passes ``target.detach()`` (an EMA teacher's output normally carries no graph anyway), so that a
test or a symmetric variant can still differentiate through both sides when it wants to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def _cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``(B, D)`` tensors -> ``(B,)``."""
    if prediction.ndim != 2 or prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must both be (B, D) with the same shape; "
            f"got {tuple(prediction.shape)} and {tuple(target.shape)}"
        )
    return (F.normalize(prediction, dim=1, eps=_EPS) * F.normalize(target, dim=1, eps=_EPS)).sum(dim=1)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss (Grill et al., NeurIPS 2020, eq. 2): ``mean_b (2 - 2 cos(p_b, z_b))``.

    Equal to the mean squared distance between the L2-normalised vectors, so it lies in [0, 4]:
    0 for aligned vectors, 4 for opposite ones, and it ignores the vectors' norms.

    Args:
        prediction: ``(B, D)`` online predictor output q(z).
        target: ``(B, D)`` target projection z'; detach it before the call (the teacher gets no
            gradient in BYOL).

    Returns:
        A scalar tensor.

    Example:
        >>> byol_loss(torch.ones(2, 3), -torch.ones(2, 3))
        tensor(4.)
    """
    return (2.0 - 2.0 * _cosine(prediction, target)).mean()


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity ``-mean_b cos(p_b, z_b)``, in [-1, 1].

    US3L (Cao et al., CVPR 2023) distils each sub-network, through its auxiliary prediction head,
    toward the EMA teacher's *full-width* output of the other view with this loss. It equals
    ``(byol_loss - 2) / 2``: same gradient direction, half the scale.

    Args:
        prediction: ``(B, D)`` sub-network output after its auxiliary head.
        target: ``(B, D)`` teacher output at full width; detach it before the call.

    Returns:
        A scalar tensor.
    """
    return -_cosine(prediction, target).mean()
