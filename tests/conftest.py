"""Shared fixtures: seeded randomness and weights that make equality tests meaningful.

A freshly built supernet has BatchNorm at identity (mean 0, var 1, weight 1, bias 0) and gates
that keep every channel (fc2 bias 2, weights ~ 0), so a test comparing two networks could pass
while slicing BN statistics or gate logits wrongly. ``randomize_bn`` and ``randomize_gates``
give every channel its own statistics and make gates drop a real fraction of channels.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import SearchSpace, SubnetConfig, get_space
from search_spaces.mobilenet import mobilenet_v2_space
from search_spaces.resnet import resnet_space
from supernet import SuperNet, build_supernet
from supernet.nn.gates import ChannelGate


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread for the duration of a test, then the previous count again.

    The test networks are small; on a 2-core machine busy with anything else, OpenMP threads
    spin-waiting for each other make these tests several times slower, not faster. Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm channel distinct running statistics and affine parameters (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def randomize_gate_logits(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gate fc2: weights ~ N(0, 1), bias 0, so keep probabilities spread around 0.5 (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ChannelGate):
                module.fc2.weight.copy_(torch.randn(module.fc2.weight.shape, generator=generator))
                module.fc2.bias.zero_()
    return model


def small_resolution(space: SearchSpace) -> int:
    """Smallest input that leaves a 2x2 map at the last stage (16 px at least): every stride still acts.

    64 px for ImageNet stems (stride 32), 16 px for CIFAR stems (stride 8) and ``tiny``.
    """
    stride = space.stem_stride * (2 if space.stem_max_pool else 1) * math.prod(b.stride for b in space.blocks)
    return max(16, 2 * stride)


@pytest.fixture
def randomize_bn() -> Callable[..., nn.Module]:
    return randomize_batchnorm


@pytest.fixture
def randomize_gates() -> Callable[..., nn.Module]:
    return randomize_gate_logits


@pytest.fixture
def resolution_of() -> Callable[[SearchSpace], int]:
    return small_resolution


def gated_subnet(
    space: SearchSpace, *, seed: int = 0, dead_block: int | None = None
) -> tuple[SuperNet, SuperNet, SubnetConfig]:
    """(supernet, extracted gated sub-network in eval mode, its config) with gates that drop a real
    fraction of channels: random BN, gate fc2 ~ N(0, 1) with bias 0, thresholds in [0.4, 0.6].
    Gated block number ``dead_block`` keeps no channel for any input."""
    rng = np.random.default_rng(seed)
    net = randomize_gate_logits(randomize_batchnorm(build_supernet(space), seed=seed), seed=seed)
    if dead_block is not None:
        dead = dict(net.named_modules())[space.gated_blocks[dead_block].name]
        with torch.no_grad():
            dead.gate.fc2.bias.fill_(-1e4)
    thresholds = {block.name: float(rng.uniform(0.4, 0.6)) for block in space.gated_blocks}
    cfg = space.sample(rng, min_multiplier=0.5).with_gates(thresholds)
    return net, net.extract(cfg).eval(), cfg


@pytest.fixture
def make_gated_subnet() -> Callable[..., tuple[SuperNet, SuperNet, SubnetConfig]]:
    return gated_subnet


def small_gated_spaces() -> dict[str, SearchSpace]:
    """One small space per gated block kind, built by the real space builders, for tests that trace
    many networks with fvcore (its cost grows with the number of ops, not with the input size).

    Each has a stride-2 block and a stride-1 block; the bottleneck one has blocks with and without a
    downsample shortcut, the MobileNetV2 one an ungated t=1 block and a residual block.
    """
    bottleneck = resnet_space(
        "test_bottleneck", block="bottleneck", depths=(2, 1), stage_widths=(16, 32), stem_width=16,
        cifar_stem=True, default_resolution=16,
    )
    inverted_residual = mobilenet_v2_space(
        "test_mobilenet_v2", cifar=True, setting=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2)),
        stem_width=32, last_width=64, default_resolution=16,
    )
    return {"basic": get_space("tiny"), "bottleneck": bottleneck, "inverted_residual": inverted_residual}


@pytest.fixture
def small_spaces() -> dict[str, SearchSpace]:
    return small_gated_spaces()
