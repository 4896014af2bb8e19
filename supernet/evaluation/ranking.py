"""How well one score orders networks as another does: Kendall's tau-b (Kendall 1945).

The measure NAS papers report for a weight-sharing oracle against stand-alone training (e.g.
NAS-Bench-201's one-shot supernets at 0.50-0.54, DESIGN.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

__all__ = ["kendall_tau_b"]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b in [-1, 1] of two scores of the same items: (concordant - discordant) pairs over
    sqrt((pairs not tied in x) * (pairs not tied in y)), as ``scipy.stats.kendalltau``; NaN (as scipy) when
    either score ties every pair: no order to agree with. O(n^2): n is a few dozen networks.

    >>> kendall_tau_b([1, 2, 3, 4], [10, 20, 40, 30])
    0.6666666666666666
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau_b: {len(x)} and {len(y)} scores; expected one of each per item")
    concordant = discordant = ties_x = ties_y = 0
    for (x1, y1), (x2, y2) in combinations(zip(x, y), 2):
        dx, dy = (x1 > x2) - (x1 < x2), (y1 > y2) - (y1 < y2)
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else float("nan")
