"""Self-supervised methods for the slimmable supernet; adding one is one file plus a registry entry."""

from __future__ import annotations

from supernet.ssl.base import Collectives, SSLMethod
from supernet.ssl.byol import BYOL
from supernet.ssl.dino import DINO
from supernet.ssl.moco import MoCoV2
from supernet.ssl.mocov3 import MoCoV3
from supernet.ssl.simclr import SimCLR, SimCLRMomentum
from supernet.ssl.simsiam import SimSiam
from supernet.ssl.swav import SwAV
from supernet.ssl.vicreg import VICReg

METHODS: dict[str, type[SSLMethod]] = {
    method.name: method for method in (BYOL, MoCoV2, SimCLRMomentum, SimCLR, SimSiam, DINO, VICReg, SwAV, MoCoV3)
}


def get_method(name: str) -> type[SSLMethod]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"ssl.name: {name!r} is not a method; valid: {', '.join(sorted(METHODS))}") from None


__all__ = ["BYOL", "Collectives", "DINO", "METHODS", "MoCoV2", "MoCoV3", "SSLMethod", "SimCLR", "SimCLRMomentum", "SimSiam",
           "SwAV", "VICReg", "get_method"]
