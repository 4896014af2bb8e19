"""BYOL (Grill et al. 2020) for the slimmable supernet: predictor on the full-width student."""

from __future__ import annotations

from typing import Any

import torch

from supernet.losses import byol_loss
from supernet.nn.heads import MLPHead
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod


class BYOL(SSLMethod):
    """Full width: predictor(projector(encoder(view))) regresses the teacher's projection of another view."""

    name = "byol"

    def __init__(self, encoder: SuperNet, *, proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int, **kwargs: Any) -> None:
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim, **kwargs)
        self.predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        projections = self.project(views)
        cache["projections"] = projections
        predictions = [self.predictor(z) for z in projections]
        return {"byol": self.cross_view(predictions, targets, byol_loss)}
