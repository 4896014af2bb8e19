"""Cost of a sub-network: fvcore FLOPs (one multiply-add = one flop), effective FLOPs, parameters."""

from __future__ import annotations

from supernet.flops import FLOP_CONVENTION, count_flops, count_params, effective_flops, static_flops

__all__ = ["FLOP_CONVENTION", "count_flops", "count_params", "effective_flops", "static_flops"]
