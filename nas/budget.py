"""Search budgets: a FLOP count or a latency, parsed from text such as ``1GFLOP`` or ``2.5ms``.

Conventions
-----------
* FLOPs follow fvcore: one multiply-add = one flop (see ``supernet.nn.flops.FLOP_CONVENTION``).
  A bare number (``5e8``) is a FLOP count.
* FLOP prefixes are ``k`` = 1e3, ``M`` = 1e6, ``G`` = 1e9, ``T`` = 1e12. Parsing is
  case-insensitive, so ``300mflops`` is 300 *mega*-FLOPs: a fraction of a flop is meaningless, so
  there is no milli-FLOP to confuse it with.
* Latency is held in seconds. Accepted units: ``s``, ``ms``, ``us`` (also ``µs``/``μs``) and ``ns``.
  ``ns`` is accepted for completeness; a budget that small is then rejected by
  :func:`check_budget_against` as below the smallest sub-network.

Example::

    >>> parse_budget("300MFLOPs")
    Budget(kind='flops', value=300000000.0)
    >>> str(parse_budget("2.5 ms"))
    '2.50 ms'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from search_spaces import UserError
from supernet.nn.flops import FLOP_CONVENTION

__all__ = [
    "Budget",
    "BudgetError",
    "BudgetKind",
    "check_budget_against",
    "format_cost",
    "format_flops",
    "format_seconds",
    "parse_budget",
]

BudgetKind = Literal["flops", "latency"]

EXPECTED_FORMS = "expected a FLOP count like 1GFLOP, 300MFLOPs, 5e8, or a latency like 2.5ms, 200us"

_FLOP_PREFIXES: dict[str, float] = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNITS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

# A signed decimal or scientific number (or nan/inf, so they get their own message), optional
# whitespace, then a run of letters as the unit. Anything else ("1..2GFLOP", "GFLOP") is garbage.
_BUDGET_RE = re.compile(
    r"^(?P<number>[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|nan|inf(?:inity)?))\s*(?P<unit>[a-z]*)$"
)
_FLOP_UNIT_RE = re.compile(r"^(?P<prefix>[kmgt]?)flops?$")


class BudgetError(UserError):
    """A budget the user wrote cannot be used; the message is one line saying what would work."""


def format_flops(value: float) -> str:
    """A FLOP count with an SI prefix and two decimals: ``4.11 GFLOPs``, ``300.00 MFLOPs``."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        # Compare after rounding so 999.999e6 prints as "1.00 GFLOPs", not "1000.00 MFLOPs".
        if round(abs(value) / scale, 2) >= 1.0:
            return f"{value / scale:.2f} {prefix}FLOPs"
    return f"{value:.2f} FLOPs"


def format_seconds(value: float) -> str:
    """A duration in seconds shown in the largest unit that keeps it >= 1: ``2.50 ms``, ``200.00 us``."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if round(abs(value) / scale, 2) >= 1.0:
            return f"{value / scale:.2f} {unit}"
    return f"{value / 1e-9:.2f} ns"


def format_cost(kind: BudgetKind, value: float) -> str:
    """Format ``value`` (FLOPs or seconds, according to ``kind``) in that kind's units."""
    return format_flops(value) if kind == "flops" else format_seconds(value)


@dataclass(frozen=True)
class Budget:
    """An upper bound on a sub-network's cost.

    Attributes:
        kind: ``"flops"`` (fvcore convention, one multiply-add = one flop) or ``"latency"``.
        value: the FLOP count, or the latency in seconds; finite and positive.
    """

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in ("flops", "latency"):
            raise BudgetError(f"budget kind {self.kind!r} is unknown; expected 'flops' or 'latency'")
        if not math.isfinite(self.value) or self.value <= 0:
            raise BudgetError(f"budget value {self.value!r} must be a finite positive number")

    def __str__(self) -> str:
        return format_cost(self.kind, self.value)

    def describe(self) -> str:
        """A sentence for logs: ``FLOPs budget 300.00 MFLOPs (fvcore, one multiply-add = one flop)``."""
        if self.kind == "flops":
            return f"FLOPs budget {self} ({FLOP_CONVENTION})"
        return f"latency budget {self}"


def parse_budget(text: str | float) -> Budget:
    """Parse a budget such as ``1GFLOP``, ``300MFLOPs``, ``5e8``, ``2.5ms`` or ``200us``.

    Case-insensitive and tolerant of surrounding whitespace and of whitespace between the number
    and the unit. A bare number is a FLOP count; a plain ``int``/``float`` (as a YAML config may
    give) is read the same way.

    Raises:
        BudgetError: empty, unparsable, unknown unit, or not a finite positive number.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise BudgetError(f"budget: {text!r} is not text or a number; {EXPECTED_FORMS}")
    original = str(text)
    normalized = original.strip().lower().replace("µ", "u").replace("μ", "u")
    if not normalized:
        raise BudgetError(f"budget: the budget is empty; {EXPECTED_FORMS}")

    match = _BUDGET_RE.match(normalized)
    if match is None:
        raise BudgetError(f"budget: {original!r} is not a number followed by a unit; {EXPECTED_FORMS}")
    number = float(match["number"])  # "1e999" overflows to inf and is caught below
    unit = match["unit"]

    flop_unit = _FLOP_UNIT_RE.match(unit)
    if unit == "" or flop_unit is not None:
        kind: BudgetKind = "flops"
        scale = _FLOP_PREFIXES[flop_unit["prefix"] if flop_unit is not None else ""]
    elif unit in _TIME_UNITS:
        kind = "latency"
        scale = _TIME_UNITS[unit]
    else:
        raise BudgetError(f"budget: {original!r} has an unknown unit {unit!r}; {EXPECTED_FORMS}")

    value = number * scale
    if not math.isfinite(value):
        raise BudgetError(f"budget: {original!r} is not a finite number; {EXPECTED_FORMS}")
    if value <= 0:
        raise BudgetError(f"budget: {original!r} must be positive; {EXPECTED_FORMS}")
    return Budget(kind=kind, value=value)


def check_budget_against(budget: Budget, *, smallest: float, largest: float) -> str | None:
    """Check a budget against the cost range of the search space.

    Args:
        budget: the parsed budget.
        smallest: cost of the smallest sub-network, in the budget's units (FLOPs or seconds).
        largest: cost of the full network, same units.

    Returns:
        A warning when the budget does not bind (the full network fits), else ``None``.

    Raises:
        BudgetError: the budget is below the smallest sub-network, so nothing is feasible.
        ValueError: ``smallest``/``largest`` are not finite, positive and ordered (a caller bug).
    """
    if not (math.isfinite(smallest) and math.isfinite(largest) and 0 < smallest <= largest):
        raise ValueError(
            f"smallest={smallest!r} and largest={largest!r} must be finite with 0 < smallest <= largest"
        )
    if budget.value < smallest:
        raise BudgetError(
            f"budget {budget} is below the smallest sub-network "
            f"({format_cost(budget.kind, smallest)}); raise the budget to at least that"
        )
    if budget.value >= largest:
        return (
            f"budget {budget} does not bind: the full network ({format_cost(budget.kind, largest)}) "
            "fits, so the search is unconstrained"
        )
    return None
