"""DINO (Caron et al., ICCV 2021) for the slimmable supernet: self-distillation with no labels.

Full width: the DINO head (3-layer MLP, hidden 2048, GELU, BatchNorm optional as SSLight uses it
for CNNs; a 256-d bottleneck, L2-normalised; then a weight-normalised linear layer with its norm
fixed at 1 onto K prototypes) gives scores over K prototypes; the student's scores of every view
(sharpened by tau_s = 0.1) take the cross-entropy toward the EMA teacher's centred and sharpened
scores of every *other* global view (:func:`supernet.losses.dino_loss`); local views only predict
global targets, and the SSLight weights mix global-global and local-global pairs. The teacher
temperature of the step comes from the loop (:meth:`set_epoch`, DINO's per-epoch warm-up
0.04 -> 0.07); the center (momentum 0.9) is updated in :meth:`after_step` from the teacher's scores
of the step, gathered over data-parallel ranks, before the teacher's EMA update (as the authors'
code updates it inside the loss). The prototypes are frozen for the first epoch (DINO's
``freeze_last_layer``), by giving them no gradient.

Sub-networks regress the EMA teacher's full-width output through the US3L auxiliary head with
``-cos`` (the gated pass likewise regresses its link, ``gates.link``), as US3L does for every method in its code (``workers/ssl.py``:
``distill_criterion(output, teacher_target)`` with its default ``CosineSimilarity``); the output
they regress is the teacher's L2-normalised bottleneck, from which its scores are one fixed
linear map away (US3L's repository also has a ``DINOLoss`` distillation criterion, which none of
its configs selects). So sub-networks neither share the prototypes nor move the center.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supernet.losses import (
    DINO_CENTER_MOMENTUM,
    DINO_STUDENT_TEMPERATURE,
    dino_center_update,
    dino_loss,
    dino_teacher_temperature,
)
from supernet.nn.models import SuperNet
from supernet.nn.ops import DynamicBatchNorm1d, DynamicLinear
from supernet.ssl.base import SSLMethod


class DINOHead(nn.Module):
    """(Linear [-> BN] -> GELU) x (layers - 1) -> Linear -> L2 normalise: (B, C') -> (B, bottleneck_dim).

    DINO's head up to its last layer (``dino/vision_transformer.py``: ``DINOHead``), with
    ``batch_norm`` as its ``use_bn_in_head``; the first layer reads the first C' <= ``in_dim``
    features, so one head serves every sub-network. Linear weights start from a truncated normal
    (std 0.02) and biases at 0, as there.
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, *, layers: int = 3, batch_norm: bool = False) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"DINOHead: layers={layers}; expected at least 2")
        blocks: list[nn.Module] = [DynamicLinear(in_dim, hidden_dim)]
        for index in range(layers - 1):
            if batch_norm:
                blocks.append(DynamicBatchNorm1d(hidden_dim))
            blocks.append(nn.GELU())
            blocks.append(nn.Linear(hidden_dim, hidden_dim if index < layers - 2 else bottleneck_dim))
        self.mlp = nn.Sequential(*blocks)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1)


class Prototypes(nn.Module):
    """DINO's last layer: ``weight_norm(Linear(dim, K, bias=False))`` with the norm fixed at 1.

    ``scores = z @ normalize(V, dim=1).T``: with L2-normalised ``z`` each score is the cosine
    between the embedding and one prototype.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default, as DINO leaves it

    def forward(self, z: torch.Tensor, *, frozen: bool = False) -> torch.Tensor:
        """(B, dim) -> (B, K); ``frozen``: the prototypes take no gradient from this call."""
        weight = self.weight.detach() if frozen else self.weight
        return F.linear(z, F.normalize(weight, dim=1))


class DINO(SSLMethod):
    name = "dino"
    settings = ("num_prototypes", "student_temperature", "teacher_temperature", "warmup_teacher_temperature",
                "warmup_teacher_temperature_epochs", "center_momentum", "head_batch_norm", "freeze_prototypes_epochs")

    def __init__(
        self,
        encoder: SuperNet,
        *,
        proj_hidden_dim: int,
        proj_dim: int,
        pred_hidden_dim: int,
        proj_layers: int = 3,
        num_prototypes: int = 65536,
        student_temperature: float = DINO_STUDENT_TEMPERATURE,
        teacher_temperature: float = 0.07,
        warmup_teacher_temperature: float = 0.04,
        warmup_teacher_temperature_epochs: int = 30,
        center_momentum: float = DINO_CENTER_MOMENTUM,
        head_batch_norm: bool = False,
        freeze_prototypes_epochs: float = 1.0,
        **kwargs: Any,
    ) -> None:
        head = DINOHead(encoder.feature_dim, proj_hidden_dim, proj_dim, layers=proj_layers, batch_norm=head_batch_norm)
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim,
                         proj_layers=proj_layers, projector=head, **kwargs)
        self.prototypes = Prototypes(proj_dim, num_prototypes)
        self.teacher_prototypes = copy.deepcopy(self.prototypes).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, num_prototypes))
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_teacher_temperature_epochs = warmup_teacher_temperature_epochs
        self.center_momentum = center_momentum
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.set_epoch(0.0)

    def student_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [*super().student_pairs(), (self.prototypes, self.teacher_prototypes)]

    def set_epoch(self, epoch: float) -> dict[str, float]:
        """The teacher temperature of the step (DINO's warm-up) and whether the prototypes are frozen."""
        self.step_teacher_temperature = dino_teacher_temperature(
            epoch, start=self.warmup_teacher_temperature, end=self.teacher_temperature,
            warmup_epochs=self.warmup_teacher_temperature_epochs)
        self.prototypes_frozen = epoch < self.freeze_prototypes_epochs
        return {"teacher_temperature": self.step_teacher_temperature, "prototypes_frozen": float(self.prototypes_frozen)}

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        student_scores = [self.prototypes(z, frozen=self.prototypes_frozen) for z in projections]
        teacher_scores = [self.teacher_prototypes(t.detach()) for t in targets]
        pair_loss = partial(dino_loss, center=self.center, teacher_temperature=self.step_teacher_temperature,
                            student_temperature=self.student_temperature)
        return {"dino": self.cross_view(student_scores, teacher_scores, pair_loss)}, projections

    @torch.no_grad()
    def after_step(self, targets: list[torch.Tensor]) -> None:
        """Center <- 0.9 center + 0.1 mean teacher scores of the step's global views over every rank."""
        scores = torch.cat([self.teacher_prototypes(t.to(self.center.dtype)) for t in targets])
        # Equal shards per rank (drop_last), so the mean of the ranks' means is the global mean.
        rank_means = self.collectives.gather_rows(scores.mean(dim=0, keepdim=True))
        self.center.copy_(dino_center_update(self.center, rank_means, self.center_momentum))
