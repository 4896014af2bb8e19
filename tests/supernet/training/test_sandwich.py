"""Which networks a step trains: the sandwich (per-layer or uniform widths) and the gated pass."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces import get_space
from supernet.training.sandwich import plan_gated, plan_subnets

STAGES = dict(stage_min_widths=[1.0, 0.75, 0.5, 0.25], stage_ends=[0.25, 0.5, 0.75, 1.0])


def test_uniform_sampling_draws_one_multiplier_per_network() -> None:
    space = get_space("tiny")
    for step in range(80, 100):
        for label, cfg in plan_subnets(space, seed=1, step=step, total_steps=100, num_subnets=4, sampling="uniform",
                                       **STAGES):
            ratios = {cfg.channels[layer.name] / layer.max_channels for layer in space.layers}
            if label.startswith("random"):  # one width multiplier, rounded per layer to its choices
                assert max(ratios) - min(ratios) <= 0.13, ratios


def test_per_layer_sampling_varies_layers_independently() -> None:
    space = get_space("tiny")
    spreads = []
    for step in range(80, 100):
        for label, cfg in plan_subnets(space, seed=1, step=step, total_steps=100, num_subnets=4, **STAGES):
            if label.startswith("random"):
                ratios = [cfg.channels[layer.name] / layer.max_channels for layer in space.layers]
                spreads.append(max(ratios) - min(ratios))
    assert max(spreads) > 0.3


def test_gated_pass_samples_a_sandwich_width_and_thresholds_in_range() -> None:
    space = get_space("tiny")
    low, high = space.gate_threshold_range
    seen_labels, seen_thresholds = set(), []
    for step in range(80, 140):
        plan = plan_subnets(space, seed=0, step=step, total_steps=140, num_subnets=4, **STAGES)
        label, cfg = plan_gated(space, plan, seed=0, step=step, threshold=0.5, sample_widths=True, sample_thresholds=True)
        assert dict(plan)[label].channels == cfg.channels and cfg.gated
        assert plan_gated(space, plan, seed=0, step=step, threshold=0.5, sample_widths=True,
                          sample_thresholds=True) == (label, cfg)  # a function of (seed, step)
        seen_labels.add(label)
        seen_thresholds += list(cfg.gate_thresholds.values())
    assert seen_labels == {"max", "min", "random0", "random1"}
    assert low <= min(seen_thresholds) and max(seen_thresholds) <= high and np.std(seen_thresholds) > 0.15


def test_gated_pass_without_sampling_is_full_width_at_the_reference_threshold() -> None:
    space = get_space("tiny")
    plan = plan_subnets(space, seed=0, step=90, total_steps=100, num_subnets=4, **STAGES)
    label, cfg = plan_gated(space, plan, seed=0, step=90, threshold=0.4, sample_widths=False, sample_thresholds=False)
    assert label == "max" and cfg == space.max_config(gate_threshold=0.4)


def test_fixed_widths_follow_the_dynamic_sampling_floor() -> None:
    space = get_space("tiny")
    kwargs = dict(seed=0, total_steps=100, num_subnets=4, sampling="fixed", fixed_widths=[1.0, 0.75, 0.5, 0.25], **STAGES)
    assert [label for label, _ in plan_subnets(space, step=10, **kwargs)] == ["max"]  # slow start
    assert [label for label, _ in plan_subnets(space, step=60, **kwargs)] == ["max", "x0.75", "x0.5"]  # floor 0.5
    plan = dict(plan_subnets(space, step=90, **kwargs))
    assert list(plan) == ["max", "x0.75", "x0.5", "x0.25"] and plan["x0.25"] == space.uniform_config(0.25)


def test_unknown_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="per_layer, uniform or fixed"):
        plan_subnets(get_space("tiny"), seed=0, step=90, total_steps=100, num_subnets=4, sampling="random", **STAGES)
