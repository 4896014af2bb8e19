"""BYOL (Grill et al. 2020) for the slimmable supernet: predictor on the full-width student."""

from __future__ import annotations

from typing import Any

import torch

from supernet.losses import byol_loss, negative_cosine
from supernet.nn.heads import MLPHead
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod

REGRESSION_LOSSES = {"negative_cosine": negative_cosine, "normalized_mse": byol_loss}


class BYOL(SSLMethod):
    """Full width: predictor(projector(encoder(view))) regresses the teacher's projection of another view.

    ``byol_loss``: ``negative_cosine`` (US3L's code, lightly: ``-cos``, the same scale as the
    sub-networks' regression) or ``normalized_mse`` (the BYOL paper's ``2 - 2cos``: twice the gradient).
    """

    name = "byol"
    settings = ("byol_loss",)

    def __init__(self, encoder: SuperNet, *, proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int,
                 byol_loss: str = "negative_cosine", **kwargs: Any) -> None:
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim, **kwargs)
        self.predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)
        if byol_loss not in REGRESSION_LOSSES:
            raise ValueError(f"byol_loss {byol_loss!r} is not one of {', '.join(REGRESSION_LOSSES)}")
        self.pair_loss = REGRESSION_LOSSES[byol_loss]

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        predictions = [self.predictor(z) for z in projections]
        return {"byol": self.cross_view(predictions, targets, self.pair_loss)}, projections
