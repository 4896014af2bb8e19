"""VICReg (Bardes, Ponce & LeCun, ICLR 2022) for the slimmable supernet, and for Krishna et al.'s
dense/gated pair (their code trains the gated network with VICReg, KrishnaTarun/Unification
``solo/methods/vicreg_gating.py``).

Full width: invariance (MSE, weight 25) between the expander outputs of two views, plus the
variance hinge (std >= 1, eps 1e-4, weight 25) and the covariance penalty (weight 1) of each, both
views with gradient (:mod:`supernet.losses.vicreg`). The expander is a 3-layer MLP with BN and ReLU
(8192-8192-8192 in the paper; ``configs/ssl/vicreg.yaml`` defaults to 2048-2048-2048, the size
Krishna et al. and solo-learn use on CIFAR). With SSLight multi-crop each local view is paired with
each global view. The terms are logged separately (``invariance``, ``variance``, ``covariance``,
already weighted; they sum to the loss).

Sub-networks regress the full-width student's projection through the US3L auxiliary head, as for
SimCLR and SimSiam (no momentum encoder in the paper: the teacher is kept at
``ssl.base_momentum: 0``, a copy of the student taken before the step). The gated pass takes
VICReg against the dense network's (detached) projection of the other view, Krishna et al.'s
pairing; the dense side's variance and covariance are then constants, kept so the value is VICReg's.
Variance and covariance are computed over each process's batch (the authors gather the global
batch first). ``variance_over_views``: ``mean`` halves the two views' variance hinges as the authors'
code does, ``sum`` adds them as solo-learn (and so Krishna et al.) does.
"""

from __future__ import annotations

from typing import Any

import torch

from supernet.losses import (
    VICREG_COVARIANCE_WEIGHT,
    VICREG_INVARIANCE_WEIGHT,
    VICREG_VARIANCE_WEIGHT,
    vicreg_covariance,
    vicreg_invariance,
    vicreg_variance,
)
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod

VARIANCE_OVER_VIEWS = ("mean", "sum")
"""How a pair's two variance hinges combine: ``mean`` as the VICReg authors' code
(facebookresearch/vicreg ``main_vicreg.py``: each view's hinge halved), ``sum`` as solo-learn's
``variance_loss`` (``solo/losses/vicreg.py``), which Krishna et al. train with: twice the term."""


class VICReg(SSLMethod):
    name = "vicreg"
    settings = ("invariance_weight", "variance_weight", "covariance_weight", "variance_over_views")

    def __init__(self, encoder: SuperNet, *, proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int,
                 invariance_weight: float = VICREG_INVARIANCE_WEIGHT, variance_weight: float = VICREG_VARIANCE_WEIGHT,
                 covariance_weight: float = VICREG_COVARIANCE_WEIGHT, variance_over_views: str = "mean",
                 **kwargs: Any) -> None:
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim, **kwargs)
        if variance_over_views not in VARIANCE_OVER_VIEWS:
            raise ValueError(f"variance_over_views {variance_over_views!r} is not one of {', '.join(VARIANCE_OVER_VIEWS)}")
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.variance_scale = 0.5 if variance_over_views == "mean" else 1.0

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        return self.vicreg_terms(projections, projections[: self.num_global]), projections

    def gated_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Krishna et al.: VICReg of the gated network's projections against the dense network's other view."""
        projections = self.project(views)
        return self.vicreg_terms(projections, [t.detach() for t in targets]), projections

    def vicreg_terms(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The weighted invariance, variance and covariance terms over the cross-view pairs.

        Each view's variance and covariance are computed once, however many pairs it enters.
        """
        regularisers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def of(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if id(z) not in regularisers:
                regularisers[id(z)] = (vicreg_variance(z), vicreg_covariance(z))
            return regularisers[id(z)]

        def pair_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            (variance_a, covariance_a), (variance_b, covariance_b) = of(a), of(b)
            return torch.stack([self.invariance_weight * vicreg_invariance(a, b),
                                self.variance_weight * (variance_a + variance_b) * self.variance_scale,
                                self.covariance_weight * (covariance_a + covariance_b)])

        invariance, variance, covariance = self.cross_view(outputs, targets, pair_loss)
        return {"invariance": invariance, "variance": variance, "covariance": covariance}
