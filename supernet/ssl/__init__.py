"""Self-supervised methods for the slimmable supernet; adding one is one file plus a registry entry."""

from __future__ import annotations

from supernet.ssl.base import SSLMethod
from supernet.ssl.byol import BYOL
from supernet.ssl.moco import MoCoV2
from supernet.ssl.simclr import SimCLRMomentum

METHODS: dict[str, type[SSLMethod]] = {BYOL.name: BYOL, MoCoV2.name: MoCoV2, SimCLRMomentum.name: SimCLRMomentum}


def get_method(name: str) -> type[SSLMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"ssl.name: {name!r} is not a method; valid: {', '.join(sorted(METHODS))}") from None


__all__ = ["BYOL", "METHODS", "MoCoV2", "SSLMethod", "SimCLRMomentum", "get_method"]
