"""Loss re-weighting by network size (SlimCLR: Zhao et al., 2023, "Slimmable Networks for
Contrastive Self-supervised Learning").

Weight-sharing networks trained together send conflicting gradients into the shared (first)
channels; the many small networks would dominate them. SlimCLR weighs each network's loss by its
size so the full network keeps the largest say.

Rule implemented (sizes normalised by the full network's, so the full network has ``w = 1 = w_max``):

* sub-network i gets ``w_i = size_i / size_full``;
* the full network gets ``1 + sum(w) - w_max = 1 + sum_{i >= 1} w_i``, i.e. 1 plus the sum of the
  sub-networks' weights.

Example: sizes ``[1.0, 0.25, 0.5]`` give weights ``[1.75, 0.25, 0.5]``.
"""

from __future__ import annotations

from collections.abc import Sequence


def size_weights(widths: Sequence[float]) -> list[float]:
    """Per-network loss weights of one sandwich step.

    Args:
        widths: relative sizes (width multipliers or FLOPs ratios; one unit for all) of the networks
            trained this step, the full network first. It must be the largest.

    Returns:
        One weight per entry of ``widths``, in the same order.
    """
    sizes = [float(width) for width in widths]
    if not sizes:
        raise ValueError("widths must name at least the full network")
    if any(size <= 0 for size in sizes):
        raise ValueError(f"every size must be > 0, got {sizes}")
    full = sizes[0]
    if max(sizes) > full:
        raise ValueError(f"the full network (first entry, {full}) must be the largest; got {sizes}")
    ratios = [size / full for size in sizes]
    full_weight = 1.0 + sum(ratios) - max(ratios)
    return [full_weight, *ratios[1:]]
