"""SimCLR (Chen et al., ICML 2020) and US3L's SimCLR-momentum (Cao et al., CVPR 2023).

``simclr``: NT-Xent between the full-width student's projections of two views, both sides with
gradient, temperature 0.5 (the value SimCLR's CIFAR-10 experiments settle on, appendix B.9, and
US3L's ``InfoNCEv2`` with ``T: 0.5``). With SSLight multi-crop each local view is contrasted with
each global view. Sub-networks regress the full-width student's own projection of the other view through the
auxiliary head: US3L's ``SimCLR`` class (``utils/ssl_algorithms/simclr.py``) has no momentum
encoder, and ``workers/ssl.py`` distils every sub-network toward the max-width pass's detached
output. Here that target is the teacher kept at ``ssl.base_momentum: 0``, a copy of the student
taken before the step (the same numbers); a momentum above 0 gives US3L's temporally consistent
EMA target instead.

``simclr_momentum``: the student's projection of each view (no predictor) against the EMA
teacher's projection of the other view, NT-Xent with temperature 0.5 (US3L ``InfoNCEv2_distill``).
Sub-networks regress the teacher through the auxiliary head like every method here (US3L; in
US3L's SimCLR-momentum the predictor exists only as that head).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from supernet.losses import nt_xent
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod


class SimCLR(SSLMethod):
    """Full width: NT-Xent between the student's own projections of different views (no teacher)."""

    name = "simclr"
    settings = ("temperature",)

    def __init__(self, encoder: SuperNet, *, proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int,
                 temperature: float = 0.5, **kwargs: Any) -> None:
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim, **kwargs)
        self.temperature = temperature

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        pair_loss = partial(nt_xent, temperature=self.temperature)
        return {"ntxent": self.cross_view(projections, self.contrast_with(projections, targets), pair_loss)}, projections

    def contrast_with(self, projections: list[torch.Tensor], targets: list[torch.Tensor]) -> list[torch.Tensor]:
        """What each view is contrasted with: the student's own global projections, with gradient."""
        return projections[: self.num_global]


class SimCLRMomentum(SimCLR):
    """SimCLR against the EMA teacher's (detached) projections of the global views."""

    name = "simclr_momentum"

    def contrast_with(self, projections: list[torch.Tensor], targets: list[torch.Tensor]) -> list[torch.Tensor]:
        return [target.detach() for target in targets]
