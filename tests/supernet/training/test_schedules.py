from __future__ import annotations

import math

import pytest

from supernet.training.schedules import (
    ema_momentum,
    gate_epoch,
    group_alpha,
    min_width_multiplier,
    warmup_cosine_lr,
)


def test_warmup_endpoints() -> None:
    values = [warmup_cosine_lr(step, 100, base_lr=0.4, warmup_steps=10) for step in range(10)]
    assert values[0] == pytest.approx(0.04)
    assert values[-1] == pytest.approx(0.4)
    assert all(later > earlier for earlier, later in zip(values, values[1:]))
    assert warmup_cosine_lr(10, 100, base_lr=0.4, warmup_steps=10) == pytest.approx(0.4)


def test_cosine_end_value_midpoint_and_monotone_decay() -> None:
    kwargs = dict(base_lr=0.4, warmup_steps=10, final_lr=0.004)
    assert warmup_cosine_lr(100, 100, **kwargs) == pytest.approx(0.004)
    assert warmup_cosine_lr(150, 100, **kwargs) == pytest.approx(0.004)
    assert warmup_cosine_lr(55, 100, **kwargs) == pytest.approx((0.4 + 0.004) / 2)
    decay = [warmup_cosine_lr(step, 100, **kwargs) for step in range(10, 101)]
    assert all(later < earlier for earlier, later in zip(decay, decay[1:]))


def test_no_warmup_starts_at_base_lr() -> None:
    assert warmup_cosine_lr(0, 50, base_lr=1.0, warmup_steps=0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_lr(0, 50, base_lr=1.0, warmup_steps=60)


def test_ema_momentum_endpoints_and_monotone() -> None:
    assert ema_momentum(0, 1000) == pytest.approx(0.99)
    assert ema_momentum(1000, 1000) == pytest.approx(1.0)
    assert ema_momentum(500, 1000) == pytest.approx(0.995)
    values = [ema_momentum(step, 1000) for step in range(0, 1001, 10)]
    assert all(later > earlier for earlier, later in zip(values, values[1:]))
    expected = 1.0 - 0.01 * (math.cos(math.pi * 0.3) + 1) / 2
    assert ema_momentum(300, 1000) == pytest.approx(expected)


def test_min_width_stage_transitions_at_exact_boundaries() -> None:
    total = 100
    assert min_width_multiplier(0, total) == 1.0
    assert min_width_multiplier(24, total) == 1.0
    assert min_width_multiplier(25, total) == 0.75
    assert min_width_multiplier(49, total) == 0.75
    assert min_width_multiplier(50, total) == 0.5
    assert min_width_multiplier(74, total) == 0.5
    assert min_width_multiplier(75, total) == 0.25
    assert min_width_multiplier(99, total) == 0.25
    assert min_width_multiplier(100, total) == 0.25


def test_min_width_slow_start_two_stages() -> None:
    # SlimCLR slow start: full network only for the first half
    assert min_width_multiplier(9, 20, stages=(1.0, 0.25), stage_ends=(0.5, 1.0)) == 1.0
    assert min_width_multiplier(10, 20, stages=(1.0, 0.25), stage_ends=(0.5, 1.0)) == 0.25


@pytest.mark.parametrize(
    "stages, stage_ends, message",
    [
        ((1.0, 0.5), (1.0,), "equal length"),
        ((0.5, 1.0), (0.5, 1.0), "non-increasing"),
        ((1.0, 0.5), (0.6, 0.4), "strictly increasing"),
        ((1.0, 0.5), (0.3, 0.9), "end at 1.0"),
        ((1.0, 0.0), (0.5, 1.0), r"\(0, 1\]"),
    ],
)
def test_min_width_validation(stages: tuple[float, ...], stage_ends: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        min_width_multiplier(0, 10, stages=stages, stage_ends=stage_ends)


def test_group_alpha_ramp_endpoints() -> None:
    assert group_alpha(0, 1000) == 0.0
    assert group_alpha(250, 1000) == pytest.approx(0.025)
    assert group_alpha(500, 1000) == pytest.approx(0.05)
    assert group_alpha(999, 1000) == pytest.approx(0.05)
    assert group_alpha(0, 1000, ramp_fraction=0.0) == pytest.approx(0.05)


def test_gate_epoch_and_step_validation() -> None:
    assert gate_epoch(250, 100) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        gate_epoch(1, 0)
    with pytest.raises(ValueError, match="step"):
        ema_momentum(-1, 10)


def test_a_warm_up_longer_than_the_run_is_fitted_into_its_first_half() -> None:
    from supernet.training.setup import fit_warmup

    assert fit_warmup(2.0, steps_per_epoch=78, total_steps=90 * 78) == (156, None)
    assert fit_warmup(1.0, steps_per_epoch=78, total_steps=78) == (78, None)  # fits: the whole run warms up
    steps, note = fit_warmup(2.0, steps_per_epoch=78, total_steps=78)
    assert steps == 39 and note is not None and "\n" not in note
    assert "optim.warmup_epochs=2 (156 steps)" in note and "1-epoch run (78 steps)" in note and "(39 steps)" in note
