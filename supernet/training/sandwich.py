"""Which sub-networks train in a step, and how much each one's loss weighs.

US3L (Cao et al., CVPR 2023) sandwich with dynamic sampling: the full network, the smallest
network the current stage allows, and ``num_subnets - 2`` random per-layer configs; during a stage
whose minimum width is 1.0 (the slow start of US3L and SlimCLR) only the full network trains.
"""

from __future__ import annotations

import numpy as np

from search_spaces import SearchSpace, SubnetConfig
from supernet.training.schedules import min_width_multiplier

__all__ = ["plan_subnets", "relative_size"]


def plan_subnets(
    space: SearchSpace,
    *,
    seed: int,
    step: int,
    total_steps: int,
    num_subnets: int,
    stage_min_widths: list[float],
    stage_ends: list[float],
) -> list[tuple[str, SubnetConfig]]:
    """The sandwich of one step as (label, config): "max", "min", "random0", ...

    A function of (seed, step) only, so every data-parallel rank and a resumed run sample the same.
    """
    floor = min_width_multiplier(step, total_steps, stages=stage_min_widths, stage_ends=stage_ends)
    plan = [("max", space.max_config())]
    if floor >= 1.0 or num_subnets < 2:
        return plan
    rng = np.random.default_rng([seed, step])
    plan.append(("min", space.min_config(min_multiplier=floor)))
    plan += [(f"random{i}", space.sample(rng, min_multiplier=floor)) for i in range(num_subnets - 2)]
    return plan


def relative_size(space: SearchSpace, cfg: SubnetConfig) -> float:
    """Mean over searchable layers of active / maximum channels (the size SlimCLR weighs by)."""
    return float(np.mean([cfg.channels[layer.name] / layer.max_channels for layer in space.layers]))
