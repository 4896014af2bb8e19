"""SimSiam (Chen & He, CVPR 2021) for the slimmable supernet: a predictor and a stop-gradient, no teacher.

Full width: ``D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2`` with ``D = -cos``, where ``z`` is the
student's own projection and ``p = predictor(z)`` (the paper's Algorithm 1); with SSLight
multi-crop the local views' predictions regress the global views' projections. The paper's heads:
a 3-layer projector whose every layer, the output included, has BatchNorm (the output BN without
an affine transform, as in facebookresearch/simsiam), and a 2-layer bottleneck predictor
(2048 -> 512 -> 2048: ``pred_hidden_dim`` = ``proj_dim`` / 4).

Sub-networks regress, through the US3L auxiliary head, the full-width student's projection of the
other view: US3L's ``SimSiam`` class (``utils/ssl_algorithms/simsiam.py``, the class its
``us_resnet18_simsiam_cifar.yaml`` builds) has no momentum encoder, and ``workers/ssl.py`` distils
every sub-network toward the max-width pass's detached projections. Here that target is the teacher
kept at ``ssl.base_momentum: 0``: a copy of the student taken before the step, the same numbers
(a momentum above 0 gives the EMA target of US3L's ``SimSiam_Momentum`` instead). US3L's class
reuses SimSiam's predictor for the sub-networks; we keep the separate auxiliary head every method
here uses (US3L's ``NEW_DISTILL_HEAD``, on by default), so small networks do not pull on the full
network's predictor.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from supernet.losses import negative_cosine
from supernet.nn.heads import MLPHead
from supernet.nn.models import SuperNet
from supernet.nn.ops import DynamicBatchNorm1d
from supernet.ssl.base import SSLMethod


class SimSiam(SSLMethod):
    """Projector with BN on its output, bottleneck predictor, symmetric ``-cos`` against the stop-gradient branch."""

    name = "simsiam"

    def __init__(self, encoder: SuperNet, *, proj_hidden_dim: int, proj_dim: int, pred_hidden_dim: int,
                 proj_layers: int = 3, **kwargs: Any) -> None:
        # The output BN has no affine transform (SimSiam's code), so the bias before it is inert.
        projector = nn.Sequential(MLPHead(encoder.feature_dim, proj_hidden_dim, proj_dim, layers=proj_layers),
                                  DynamicBatchNorm1d(proj_dim, affine=False))
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim,
                         proj_layers=proj_layers, projector=projector, **kwargs)
        self.predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        predictions = [self.predictor(z) for z in projections]
        stopped = [z.detach() for z in projections[: self.num_global]]
        return {"simsiam": self.cross_view(predictions, stopped, negative_cosine)}, projections
