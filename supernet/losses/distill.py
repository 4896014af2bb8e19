"""Online logit distillation from the full network to its sub-networks (SlimCLR).

SlimCLR (Zhao et al., 2023, "Slimmable Networks for Contrastive Self-supervised Learning") distils
each sub-network's contrastive logits from the full network's, with temperature T = 5, and trains a
sub-network on ``(1 - SLIMCLR_KD_WEIGHT) * InfoNCE + SLIMCLR_KD_WEIGHT * KD``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SLIMCLR_KD_WEIGHT = 0.5
SLIMCLR_KD_TEMPERATURE = 5.0


def logit_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = SLIMCLR_KD_TEMPERATURE
) -> torch.Tensor:
    """``T^2 * mean_b KL(softmax(t_b / T) || softmax(s_b / T))`` (Hinton et al. 2015 scaling).

    The ``T^2`` factor keeps the gradient's size comparable to a hard-label loss as T changes.
    For contrastive logits the two rows must index the same candidates: compute both against the
    same key and queue, so column j means the same sample for student and teacher.

    Args:
        student_logits: ``(B, N)`` sub-network logits.
        teacher_logits: ``(B, N)`` full-network logits; detach before the call (online distillation
            must not pull the full network toward its sub-networks).
        temperature: softening temperature T > 0.

    Returns:
        A scalar tensor, 0 when the two distributions are equal and > 0 otherwise.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must both be (B, N) with the same shape; "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2
