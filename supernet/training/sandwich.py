"""Which sub-networks train in a step, and how much each one's loss weighs.

US3L (Cao et al., CVPR 2023) sandwich with dynamic sampling: the full network, the smallest
network the current stage allows, and ``num_subnets - 2`` random per-layer configs; during a stage
whose minimum width is 1.0 (the slow start of US3L and SlimCLR) only the full network trains.
"""

from __future__ import annotations

import numpy as np
import torch

from search_spaces import SearchSpace, SubnetConfig
from supernet.training.schedules import min_width_multiplier

__all__ = ["plan_gated", "plan_subnets", "relative_size", "step_generator"]


def plan_subnets(
    space: SearchSpace,
    *,
    seed: int,
    step: int,
    total_steps: int,
    num_subnets: int,
    stage_min_widths: list[float],
    stage_ends: list[float],
    sampling: str = "per_layer",
    fixed_widths: list[float] | None = None,
) -> list[tuple[str, SubnetConfig]]:
    """The sandwich of one step as (label, config): "max", "min", "random0", ...

    ``sampling``: ``per_layer`` draws every searchable width independently (the non-uniform
    networks the search explores; AutoSlim, Once-for-All); ``uniform`` draws one width multiplier
    in [floor, 1] for the whole network (US3L); ``fixed`` trains the uniform networks at
    ``fixed_widths`` (at least the stage's floor) every step, as SlimCLR trains [1, .75, .5, .25].
    A function of (seed, step) only, so every data-parallel rank and a resumed run sample the same.
    """
    floor = min_width_multiplier(step, total_steps, stages=stage_min_widths, stage_ends=stage_ends)
    plan = [("max", space.max_config())]
    if floor >= 1.0 or num_subnets < 2:
        return plan
    if sampling == "fixed":
        widths = sorted({w for w in (fixed_widths or []) if floor <= w < 1.0}, reverse=True)
        return plan + [(f"x{w:g}", space.uniform_config(w)) for w in widths]
    rng = np.random.default_rng([seed, step])
    plan.append(("min", space.min_config(min_multiplier=floor)))
    for i in range(num_subnets - 2):
        if sampling == "uniform":
            sampled = space.uniform_config(float(rng.uniform(floor, 1.0)))
        elif sampling == "per_layer":
            sampled = space.sample(rng, min_multiplier=floor)
        else:
            raise ValueError(f"sampling {sampling!r} is not per_layer, uniform or fixed")
        plan.append((f"random{i}", sampled))
    return plan


def plan_gated(
    space: SearchSpace,
    plan: list[tuple[str, SubnetConfig]],
    *,
    seed: int,
    step: int,
    threshold: float,
    sample_widths: bool,
    sample_thresholds: bool,
) -> tuple[str, SubnetConfig]:
    """The gated pass of one step: one of the sandwich's networks, with gate thresholds.

    The search combines gates with any width and any threshold in the space's range, so training
    does too: the width is drawn from the step's sandwich (``sample_widths``; else full width) and
    each block's threshold uniformly from ``space.gate_threshold_range`` (``sample_thresholds``;
    else ``threshold``). Its own random stream, a function of (seed, step).
    """
    rng = np.random.default_rng([seed, step, 1])
    label, width = plan[int(rng.integers(len(plan)))] if sample_widths else plan[0]
    low, high = space.gate_threshold_range
    thresholds = {block.name: float(rng.uniform(low, high)) if sample_thresholds else threshold
                  for block in space.gated_blocks}
    return label, width.with_gates(thresholds)


def relative_size(space: SearchSpace, cfg: SubnetConfig) -> float:
    """Mean over searchable layers of active / maximum channels (the size SlimCLR weighs by)."""
    return float(np.mean([cfg.channels[layer.name] / layer.max_channels for layer in space.layers]))


def step_generator(seed: int, step: int, *, stream: int) -> torch.Generator:
    """A CPU generator that is a function of (seed, step, stream) only: the same on every data-parallel
    rank and in a resumed run. Streams: 0 the sandwich, 1 the gated pass (both numpy), 2 Shuffle-BN."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0]))
