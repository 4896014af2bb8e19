"""MoCo v3 (Chen, Xie & He, ICCV 2021) for the slimmable supernet: symmetric contrast with a momentum encoder.

Full width, as ``moco/builder.py`` (``MoCo.forward``, ``contrastive_loss``, ``MoCo_ResNet``,
``MoCo_ViT``) runs it: the student's predictor output of each view contrasts with the momentum
teacher's projection of the other view, ``ctr(q1, k2) + ctr(q2, k1)``, each term
``CrossEntropy(q @ k^T / T, labels) * 2T`` over the keys of the whole global batch
(``collectives.gather_rows``; labels offset by ``rank * B``), no queue
(:func:`supernet.losses.mocov3_loss`). Heads (:class:`~supernet.nn.heads.BatchNormMLP`, no biases,
``pred_hidden_dim`` wide): a ``proj_layers``-layer projector ending in a BatchNorm without affine
parameters (3 layers in ``MoCo_ViT``, 2 in ``MoCo_ResNet``) and a 2-layer predictor, which ends in
that BatchNorm too for a ViT encoder (``MoCo_ViT``) and not for a CNN (``MoCo_ResNet``). The
momentum is the loop's cosine schedule 0.99 -> 1 (``--moco-m-cos``; the same formula as
``adjust_moco_momentum``); T is 1.0 in ``main_moco.py`` (ResNets) and 0.2 in the ViT configs.
With SSLight multi-crop each local view's query contrasts with both global views' keys; the pair
terms are mixed as every method's (:meth:`SSLMethod.cross_view`) and scaled by 2, so that two
views give moco-v3's sum of the two symmetric terms.

``freeze_patch_embed`` (moco-v3's ``--stop-grad-conv1``, on in all its ViT configs): a ViT's patch
projection stays at its random initialisation, which ``vits.py`` draws xavier-uniform
(bound ``sqrt(6 / (3 p^2 + E))``) with a zero bias; the supernet's draw (``nn.Conv2d``'s uniform
within ``1 / sqrt(3 p^2)``) is rescaled to that bound, so no new random numbers are drawn. It gets
``requires_grad=False`` before the teacher is copied: the optimizer never holds it (no update, no
decay), the teacher's copy is overwritten with the student's exactly at every update, and a resumed
run rebuilds the method frozen before loading the weights. CNNs have no patch projection; the
setting does nothing there.

Sub-networks regress the EMA teacher's full-width projection of the other view through the US3L
auxiliary head (US3L's rule for every method). With ``online_distillation`` they take SlimCLR's
instead (``models/s_mocov3.py`` with ``seed_loss``, ``scripts/mocov3.sh``): their own MoCo v3 loss
through the shared predictor, weighted 0.5, plus 0.5 x KD of their logits toward the full network's
(the same gathered keys, teacher and student temperature 1.0 on the cosines). SlimCLR's KD is the
cross-entropy ``-sum p_full log p_sub``; ours is the KL divergence, which differs by the full
network's entropy, a constant for the sub-network: the same gradient, a smaller logged value.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from supernet.losses import (
    MOCOV3_RESNET_TEMPERATURE,
    SLIMCLR_KD_WEIGHT,
    logit_distillation,
    mocov3_cosines,
    mocov3_loss,
)
from supernet.nn.heads import BatchNormMLP
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod

SLIMCLR_MOCOV3_KD_TEMPERATURE = 1.0  # scripts/mocov3.sh: teacher_T=1.0, student_T=1.0
SYMMETRIC_TERMS = 2.0  # moco-v3 sums ctr(q1, k2) and ctr(q2, k1); cross_view averages the pairs


def freeze_patch_projection(encoder: SuperNet) -> nn.Conv2d:
    """Fix a ViT's patch projection at moco-v3's random initialisation (``vits.py``, ``stop_grad_conv1``).

    Rescales the supernet's default draw, uniform in +-1/sqrt(fan_in), to moco-v3's xavier-uniform
    bound sqrt(6 / (fan_in + E)), zeroes the bias and turns off their gradients. Returns the projection.
    """
    projection = encoder.patch_embed.proj  # type: ignore[union-attr]
    fan_in = projection.weight[0].numel()  # 3 * patch * patch
    bound = math.sqrt(6.0 / (fan_in + projection.weight.shape[0]))
    with torch.no_grad():
        projection.weight.mul_(bound * math.sqrt(fan_in))
        if projection.bias is not None:
            projection.bias.zero_()
    projection.requires_grad_(False)
    return projection


class MoCoV3(SSLMethod):
    """Projector and predictor :class:`BatchNormMLP`; the teacher is the EMA of encoder and projector."""

    name = "mocov3"
    settings = ("temperature", "freeze_patch_embed", "online_distillation")

    def __init__(
        self,
        encoder: SuperNet,
        *,
        proj_hidden_dim: int,
        proj_dim: int,
        pred_hidden_dim: int,
        proj_layers: int = 2,
        temperature: float = MOCOV3_RESNET_TEMPERATURE,
        freeze_patch_embed: bool = True,
        online_distillation: bool = False,
        **kwargs: Any,
    ) -> None:
        is_vit = encoder.space.family == "vit"
        if freeze_patch_embed and is_vit:
            freeze_patch_projection(encoder)  # before the teacher is copied from the encoder
        projector = BatchNormMLP(encoder.feature_dim, proj_hidden_dim, proj_dim, layers=proj_layers, last_batch_norm=True)
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim,
                         proj_layers=proj_layers, projector=projector, **kwargs)
        self.predictor = BatchNormMLP(proj_dim, pred_hidden_dim, proj_dim, layers=2, last_batch_norm=is_vit)
        self.temperature = temperature
        self.online_distillation = online_distillation

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA as every method; frozen parameters copied exactly (an EMA of equal values drifts by rounding)."""
        super().update_teacher(momentum)
        for student, teacher in self.student_pairs():
            for student_param, teacher_param in zip(student.parameters(), teacher.parameters()):
                if not student_param.requires_grad:
                    teacher_param.copy_(student_param)

    def _contrast(self, projections: list[torch.Tensor], keys: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The MoCo v3 loss of these projections' queries against the gathered keys, and the queries."""
        queries = [self.predictor(z) for z in projections]
        pair_loss = partial(mocov3_loss, temperature=self.temperature, rank=self.collectives.rank)
        return SYMMETRIC_TERMS * self.cross_view(queries, keys, pair_loss), queries

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        keys = [self.collectives.gather_rows(t.detach().contiguous()) for t in targets]
        loss, queries = self._contrast(projections, keys)
        cache["keys"], cache["queries"] = keys, [q.detach() for q in queries]
        return {"mocov3": loss}, projections

    def route_embeddings(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """With online distillation sub-networks contrast their own projections with the teacher's keys (the
        auxiliary head is not trained); else US3L's auxiliary-head prediction."""
        if self.online_distillation:
            return self.project(views[: self.num_global])
        return super().route_embeddings(views)

    def subnet_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        if not self.online_distillation:
            return super().subnet_loss(views, targets, cache)
        projections = self.project(views)
        contrastive, queries = self._contrast(projections, cache["keys"])

        def distill(query_pair: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor) -> torch.Tensor:
            sub, full = query_pair
            return logit_distillation(mocov3_cosines(sub, keys), mocov3_cosines(full, keys), SLIMCLR_MOCOV3_KD_TEMPERATURE)

        pairs = list(zip(queries, cache["queries"]))
        kd = SYMMETRIC_TERMS * self.cross_view(pairs, cache["keys"], distill)  # type: ignore[arg-type]
        return {"infonce": (1 - SLIMCLR_KD_WEIGHT) * contrastive, "kd": SLIMCLR_KD_WEIGHT * kd}, projections
