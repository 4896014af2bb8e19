"""Training schedules as pure functions of the optimisation step.

The training loop owns every schedule: it calls these with its global step (0-based) and the total
number of steps, and passes the values to the optimiser, the EMA update, the width sampler, the
group regulariser and the gate losses. Nothing here keeps state, so a resumed run reproduces the
same values from the step alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _check_step(step: int, total_steps: int) -> None:
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")


def warmup_cosine_lr(
    step: int, total_steps: int, *, base_lr: float, warmup_steps: int, final_lr: float = 0.0
) -> float:
    """Linear warm-up then half-cosine decay (Goyal et al. 2017; Loshchilov & Hutter 2017).

    Warm-up: ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (so step 0 already
    trains with a small, non-zero rate and step ``warmup_steps - 1`` reaches ``base_lr``).
    Then ``final_lr + (base_lr - final_lr) * (1 + cos(pi * p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)``: ``base_lr`` at the end of
    warm-up, ``final_lr`` at ``step == total_steps`` (and after).
    """
    _check_step(step, total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps == 0:
        return base_lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(step: int, total_steps: int, *, base: float = 0.99, final: float = 1.0) -> float:
    """EMA-teacher momentum, cosine-increased from ``base`` to ``final`` (BYOL, Grill et al. 2020).

    ``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``; ``base`` at step 0,
    ``final`` at ``total_steps`` (clamped after). US3L uses base 0.99.
    """
    _check_step(step, total_steps)
    if not 0.0 <= base <= final <= 1.0:
        raise ValueError(f"need 0 <= base <= final <= 1, got base={base}, final={final}")
    progress = min(1.0, step / total_steps)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def min_width_multiplier(
    step: int,
    total_steps: int,
    *,
    stages: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
    stage_ends: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
) -> float:
    """Smallest width multiplier the sandwich may sample now (US3L dynamic sampling, Cao et al. 2023).

    Training is split into stages; the current stage is the first whose end fraction exceeds
    ``step / total_steps`` (the last stage from ``step >= total_steps`` on). A stage boundary belongs
    to the next stage: with the defaults, step ``total_steps / 4`` is already in stage 2 (0.75).
    Stage 1 at 1.0 trains the full width only (the slow start of US3L and SlimCLR).

    Args:
        stages: minimum width multiplier of each stage, in (0, 1], non-increasing.
        stage_ends: end of each stage as a fraction of training, strictly increasing, last one 1.0.
    """
    _check_step(step, total_steps)
    if len(stages) == 0 or len(stages) != len(stage_ends):
        raise ValueError(
            f"stages and stage_ends must be non-empty and of equal length; got {len(stages)} and {len(stage_ends)}"
        )
    if any(not 0.0 < width <= 1.0 for width in stages):
        raise ValueError(f"every stage width must be in (0, 1]; got {tuple(stages)}")
    if any(later > earlier for earlier, later in zip(stages, stages[1:])):
        raise ValueError(f"stages must be non-increasing (the minimum width only drops); got {tuple(stages)}")
    if any(not 0.0 < end <= 1.0 for end in stage_ends) or any(
        later <= earlier for earlier, later in zip(stage_ends, stage_ends[1:])
    ):
        raise ValueError(f"stage_ends must be strictly increasing fractions in (0, 1]; got {tuple(stage_ends)}")
    if stage_ends[-1] != 1.0:
        raise ValueError(f"the last stage must end at 1.0 (the end of training); got {stage_ends[-1]}")
    progress = step / total_steps
    for width, end in zip(stages, stage_ends):
        if progress < end:
            return float(width)
    return float(stages[-1])


def group_alpha(step: int, total_steps: int, *, max_alpha: float = 0.05, ramp_fraction: float = 0.5) -> float:
    """Group-regularisation strength alpha (US3L, Cao et al. 2023): linear 0 -> ``max_alpha`` over
    the first ``ramp_fraction`` of training, then constant. ``ramp_fraction = 0`` gives
    ``max_alpha`` from the start."""
    _check_step(step, total_steps)
    if not 0.0 <= ramp_fraction <= 1.0:
        raise ValueError(f"ramp_fraction must be in [0, 1], got {ramp_fraction}")
    if max_alpha < 0:
        raise ValueError(f"max_alpha must be >= 0, got {max_alpha}")
    ramp_steps = ramp_fraction * total_steps
    if ramp_steps == 0:
        return max_alpha
    return max_alpha * min(1.0, step / ramp_steps)


def gate_epoch(step: int, steps_per_epoch: int) -> float:
    """Fractional epoch ``step / steps_per_epoch`` for the gate density-bound annealing
    (``supernet.losses.density_bounds``), which Krishna et al. (2023) define per epoch."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return step / steps_per_epoch
