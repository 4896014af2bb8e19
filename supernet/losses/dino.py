"""DINO's self-distillation loss, its centering and its teacher-temperature warm-up (Caron et al.,
ICCV 2021, "Emerging Properties in Self-Supervised Vision Transformers", Algorithm 1).

The teacher's logits are *centred* (a running mean ``c`` over batches is subtracted) and
*sharpened* (a low temperature ``tau_t``); the student's are softened with ``tau_s = 0.1``; the
loss is the cross-entropy ``H(P_t, P_s) = -sum_k P_t[k] log P_s[k]``. Centering alone would flatten
the teacher toward uniform and sharpening alone would collapse it onto one prototype; together
they keep it from both. ``c`` is an exponential moving average of the teacher's batch mean,
updated once per step after the loss (momentum 0.9). ``tau_t`` warms up linearly from 0.04 to its
final value (0.07 for DINO's ViTs and SSLight's CNNs) over the first epochs, one value per epoch as
in the authors' code; the training loop owns that schedule and passes the value of the step in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DINO_STUDENT_TEMPERATURE = 0.1
DINO_CENTER_MOMENTUM = 0.9


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    *,
    teacher_temperature: float,
    student_temperature: float = DINO_STUDENT_TEMPERATURE,
) -> torch.Tensor:
    """``mean_b -sum_k softmax((t_b - c) / tau_t)[k] * log_softmax(s_b / tau_s)[k]`` for one view pair.

    Args:
        student_logits: ``(B, K)`` student scores over K prototypes for one view.
        teacher_logits: ``(B, K)`` teacher scores of another (global) view of the same images;
            the teacher side gets no gradient here (it is detached).
        center: ``(1, K)`` or ``(K,)`` running mean of the teacher's logits.
        teacher_temperature: tau_t > 0 of this step (0.04 -> 0.07 in DINO's warm-up).
        student_temperature: tau_s > 0 (0.1 in DINO).

    Returns:
        A scalar tensor. It is the teacher's entropy when the two distributions agree, and
        larger otherwise.

    Example:
        >>> s = torch.tensor([[2.0, 0.0]]); t = torch.tensor([[1.0, 0.0]])
        >>> round(float(dino_loss(s, t, torch.zeros(1, 2), teacher_temperature=1.0, student_temperature=1.0)), 4)
        0.6648
    """
    if teacher_temperature <= 0 or student_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got teacher {teacher_temperature}, student {student_temperature}")
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must both be (B, K) with the same shape; "
            f"got {tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if center.numel() != student_logits.shape[1]:
        raise ValueError(f"center must hold K={student_logits.shape[1]} values; got shape {tuple(center.shape)}")
    teacher_probs = F.softmax((teacher_logits.detach().float() - center.reshape(1, -1).float()) / teacher_temperature, dim=1)
    student_log_probs = F.log_softmax(student_logits.float() / student_temperature, dim=1)
    return -(teacher_probs * student_log_probs).sum(dim=1).mean()


@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = DINO_CENTER_MOMENTUM) -> torch.Tensor:
    """The next center, ``momentum * center + (1 - momentum) * mean_rows(teacher_logits)``.

    Args:
        center: ``(1, K)`` current center (zeros at the start of training, as in DINO).
        teacher_logits: ``(N, K)`` the teacher's logits of this step: every global view of every
            image, or the per-rank means gathered from equally sized data-parallel shards (whose
            mean is the same global mean).
        momentum: in [0, 1]; 0.9 in DINO.

    Returns:
        A new ``(1, K)`` tensor (``center`` is not modified).

    Example:
        >>> dino_center_update(torch.zeros(1, 2), torch.tensor([[1.0, 3.0], [3.0, 5.0]]), 0.9)
        tensor([[0.2000, 0.4000]])
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
    if teacher_logits.ndim != 2 or teacher_logits.shape[1] != center.numel():
        raise ValueError(f"teacher_logits must be (N, K={center.numel()}); got {tuple(teacher_logits.shape)}")
    batch_center = teacher_logits.float().mean(dim=0, keepdim=True)
    return center.reshape(1, -1) * momentum + batch_center * (1.0 - momentum)


def dino_teacher_temperature(epoch: float, *, start: float, end: float, warmup_epochs: int) -> float:
    """The teacher temperature of (fractional) ``epoch``: DINO's per-epoch linear warm-up.

    The authors' table ``linspace(start, end, warmup_epochs)`` indexed by the whole epoch, then
    ``end``: ``start`` in epoch 0, ``end`` in epoch ``warmup_epochs - 1`` and after.

    >>> [round(dino_teacher_temperature(e, start=0.04, end=0.07, warmup_epochs=4), 3) for e in (0, 1.5, 3, 9)]
    [0.04, 0.05, 0.07, 0.07]
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    whole = math.floor(epoch)
    if whole >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * whole / (warmup_epochs - 1)
