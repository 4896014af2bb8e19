"""Loss functions for self-supervised slimmable supernets: pure functions of tensors, one concern
per file. Which terms a training step uses, and their weights, is the training step's business."""

from __future__ import annotations

from supernet.losses.budget import (
    BUDGET_LOSS_WEIGHT,
    DENSITY_ANNEALING_RATE,
    density_bound_loss,
    density_bounds,
    flops_budget_loss,
)
from supernet.losses.dino import (
    DINO_CENTER_MOMENTUM,
    DINO_STUDENT_TEMPERATURE,
    dino_center_update,
    dino_loss,
    dino_teacher_temperature,
)
from supernet.losses.distill import (
    SLIMCLR_KD_TEMPERATURE,
    SLIMCLR_KD_WEIGHT,
    logit_distillation,
)
from supernet.losses.infonce import contrastive_logits, info_nce
from supernet.losses.mocov3 import (
    MOCOV3_RESNET_TEMPERATURE,
    MOCOV3_VIT_TEMPERATURE,
    mocov3_cosines,
    mocov3_loss,
)
from supernet.losses.ntxent import nt_xent
from supernet.losses.regression import byol_loss, negative_cosine
from supernet.losses.swav import (
    SINKHORN_EPSILON,
    SINKHORN_ITERATIONS,
    SWAV_TEMPERATURE,
    sinkhorn,
    swav_loss,
)
from supernet.losses.vicreg import (
    VICREG_COVARIANCE_WEIGHT,
    VICREG_INVARIANCE_WEIGHT,
    VICREG_VARIANCE_WEIGHT,
    vicreg_covariance,
    vicreg_invariance,
    vicreg_loss,
    vicreg_variance,
)
from supernet.losses.weighting import LOSS_WEIGHTINGS, loss_weights

__all__ = [
    "LOSS_WEIGHTINGS",
    "BUDGET_LOSS_WEIGHT",
    "DENSITY_ANNEALING_RATE",
    "DINO_CENTER_MOMENTUM",
    "DINO_STUDENT_TEMPERATURE",
    "MOCOV3_RESNET_TEMPERATURE",
    "MOCOV3_VIT_TEMPERATURE",
    "SINKHORN_EPSILON",
    "SINKHORN_ITERATIONS",
    "SLIMCLR_KD_TEMPERATURE",
    "SLIMCLR_KD_WEIGHT",
    "SWAV_TEMPERATURE",
    "VICREG_COVARIANCE_WEIGHT",
    "VICREG_INVARIANCE_WEIGHT",
    "VICREG_VARIANCE_WEIGHT",
    "byol_loss",
    "contrastive_logits",
    "density_bound_loss",
    "density_bounds",
    "dino_center_update",
    "dino_loss",
    "dino_teacher_temperature",
    "flops_budget_loss",
    "info_nce",
    "logit_distillation",
    "mocov3_cosines",
    "mocov3_loss",
    "negative_cosine",
    "nt_xent",
    "sinkhorn",
    "swav_loss",
    "loss_weights",
    "vicreg_covariance",
    "vicreg_invariance",
    "vicreg_loss",
    "vicreg_variance",
]
