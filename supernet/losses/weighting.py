"""How much each network of a sandwich step weighs in the loss.

* ``equal`` (US3L: Cao et al., CVPR 2023): every network's loss has weight 1.
* ``slimclr`` (SlimCLR: Zhao et al., 2023, option 5 of ``loss_weights_generate`` in its released
  scripts): with ``w_i`` the networks' width multipliers (the full network's is 1 = ``w_max``), the
  full network gets ``1 + sum(w) - w_max`` and **every sub-network 1.0**, so the full network keeps
  the largest say over the channels all of them share. For widths [1, .75, .5, .25] the weights
  are [2.5, 1, 1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

LOSS_WEIGHTINGS = ("equal", "slimclr")


def loss_weights(kind: str, widths: Sequence[float]) -> list[float]:
    """Per-network loss weights of one sandwich step, the full network first.

    Args:
        kind: one of :data:`LOSS_WEIGHTINGS`.
        widths: width multipliers of the networks trained this step (relative to the full network,
            which comes first and is the largest).

    >>> loss_weights("slimclr", [1.0, 0.75, 0.5, 0.25])
    [2.5, 1.0, 1.0, 1.0]
    >>> loss_weights("equal", [1.0, 0.3])
    [1.0, 1.0]
    """
    sizes = [float(width) for width in widths]
    if not sizes:
        raise ValueError("widths must name at least the full network")
    if any(size <= 0 for size in sizes) or max(sizes) > sizes[0]:
        raise ValueError(f"widths must be positive with the full network first and largest; got {sizes}")
    if kind == "equal":
        return [1.0] * len(sizes)
    if kind == "slimclr":
        ratios = [size / sizes[0] for size in sizes]
        return [1.0 + sum(ratios) - max(ratios)] + [1.0] * (len(sizes) - 1)
    raise ValueError(f"loss weighting {kind!r} is not one of {', '.join(LOSS_WEIGHTINGS)}")
