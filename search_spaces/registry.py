"""The registry of named search spaces: an explicit dict of builders."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from functools import lru_cache
from typing import Callable

from search_spaces.config import SubnetConfig

from search_spaces.mobilenet import mobilenet_v2_space
from search_spaces.resnet import resnet_space
from search_spaces.spec import SearchSpace
from search_spaces.vit import vit_space, vit_tiny_space

SPACE_BUILDERS: dict[str, Callable[[], SearchSpace]] = {
    "resnet18": lambda: resnet_space("resnet18", block="basic", depths=(2, 2, 2, 2)),
    "resnet34": lambda: resnet_space("resnet34", block="basic", depths=(3, 4, 6, 3)),
    "resnet50": lambda: resnet_space("resnet50", block="bottleneck", depths=(3, 4, 6, 3)),
    "resnet18_cifar": lambda: resnet_space(
        "resnet18_cifar", block="basic", depths=(2, 2, 2, 2), cifar_stem=True, default_resolution=32
    ),
    "resnet50_cifar": lambda: resnet_space(
        "resnet50_cifar", block="bottleneck", depths=(3, 4, 6, 3), cifar_stem=True, default_resolution=32
    ),
    "mobilenet_v2": lambda: mobilenet_v2_space("mobilenet_v2"),
    "mobilenet_v2_cifar": lambda: mobilenet_v2_space("mobilenet_v2_cifar", cifar=True, default_resolution=32),
    "small": lambda: resnet_space(
        "small", block="basic", depths=(1, 1, 1), stage_widths=(32, 64, 128), stem_width=32, cifar_stem=True,
        default_resolution=32,
    ),
    # A few blocks for tests and smoke runs: the real build path at a size that runs in milliseconds.
    "tiny": lambda: resnet_space(
        "tiny",
        block="basic",
        depths=(1, 1),
        stage_widths=(32, 64),
        stem_width=32,
        cifar_stem=True,
        default_resolution=32,
    ),
    # ViT-Tiny (DeiT-Ti): 224 px with 16-px patches; 32 px with 4-px patches (8x8 tokens, as CIFAR ViTs use)
    "vit_tiny": lambda: vit_tiny_space("vit_tiny"),
    "vit_tiny_cifar": lambda: vit_tiny_space("vit_tiny_cifar", patch_size=4, default_resolution=32),
    # two blocks of two 16-wide heads on 4x4 tokens: the ViT build path at a size that runs in milliseconds
    "vit_test": lambda: vit_space(
        "vit_test", embed_dim=32, depth=2, num_heads=2, head_dim=16, patch_size=8, default_resolution=32
    ),
}


def list_spaces() -> list[str]:
    return sorted(SPACE_BUILDERS)


@lru_cache(maxsize=None)
def get_space(name: str) -> SearchSpace:
    """The search space called ``name``; raises ``KeyError`` listing the valid names.

    ``"<space>@<multiplier>"`` (e.g. ``"resnet18_cifar@0.5"``) is the one fixed network of that
    space at a uniform width: the baseline a one-shot supernet is compared with.
    """
    base, _, multiplier = name.partition("@")
    try:
        builder = SPACE_BUILDERS[base]
    except KeyError:
        raise KeyError(f"unknown search space {name!r}; valid: {', '.join(list_spaces())} "
                       "(or <space>@<width multiplier>)") from None
    space = builder()
    if not multiplier:
        return space
    try:
        value = float(multiplier)
    except ValueError:
        raise KeyError(f"unknown search space {name!r}: {multiplier!r} is not a width multiplier in (0, 1]") from None
    if not 0.0 < value <= 1.0:
        raise KeyError(f"unknown search space {name!r}: {multiplier!r} is not a width multiplier in (0, 1]")
    return replace(space.narrow(space.uniform_config(value).channels), name=name)


def subnet_space(cfg: SubnetConfig) -> SearchSpace:
    """The space whose one network is ``cfg``'s widths, to train that sub-network on its own (its stand-alone
    twin), as ``"<space>@<multiplier>"`` is for a uniform width. Gate and route thresholds play no part: the
    network is the static one of those widths. Named ``"<space>@subnet-<12 hex digits>"`` (a SHA-256 of the
    widths); :func:`get_space` cannot rebuild it from the name, so a checkpoint of it stores ``cfg``.

    >>> base = get_space("tiny")
    >>> space = subnet_space(base.min_config())
    >>> space.name.startswith("tiny@subnet-"), space.max_config().channels == base.min_config().channels
    (True, True)
    """
    base = get_space(cfg.space)
    base.validate(cfg)
    widths = json.dumps(dict(sorted(cfg.channels.items())), separators=(",", ":"))
    return replace(base.narrow(cfg.channels), name=f"{base.name}@subnet-{hashlib.sha256(widths.encode()).hexdigest()[:12]}")
