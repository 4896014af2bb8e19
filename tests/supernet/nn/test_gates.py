"""Dynamic channel gates: Gumbel-sigmoid straight-through, thresholds, masked vs gathered execution."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from search_spaces import get_space
from supernet import build_supernet
from supernet.nn.gates import (
    GUMBEL_TEMPERATURE,
    ChannelGate,
    GateOptions,
    gumbel_sigmoid_straight_through,
)
from supernet.nn.ops import BranchBatchNorm2d

pytestmark = pytest.mark.usefixtures("single_thread")


def _soft_sample(logits: torch.Tensor, seed: int, temperature: float = GUMBEL_TEMPERATURE) -> torch.Tensor:
    """The relaxed sample the straight-through estimator draws with generator seed ``seed``."""
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(seed)).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((logits + torch.log(uniform) - torch.log1p(-uniform)) / temperature)


# -- Gumbel-sigmoid straight-through ------------------------------------------------------------------

def test_straight_through_values_are_exactly_zero_or_one() -> None:
    logits = torch.randn(200_000) * 3
    mask = gumbel_sigmoid_straight_through(logits, generator=torch.Generator().manual_seed(0))
    assert ((mask == 0) | (mask == 1)).all()
    assert 0 < mask.sum() < mask.numel()


def test_straight_through_forward_is_hard_and_backward_is_the_relaxed_gradient() -> None:
    logits = (torch.randn(1000) * 2).requires_grad_()
    weights = torch.randn(1000)
    mask = gumbel_sigmoid_straight_through(logits, generator=torch.Generator().manual_seed(5))
    (mask * weights).sum().backward()
    soft = _soft_sample(logits.detach(), seed=5)
    torch.testing.assert_close(mask.detach(), (soft >= 0.5).float(), rtol=0, atol=0)
    expected_grad = weights * soft * (1 - soft) / GUMBEL_TEMPERATURE
    torch.testing.assert_close(logits.grad, expected_grad)
    assert (logits.grad != 0).float().mean() > 0.9


@pytest.mark.parametrize("logit", [-2.0, -0.5, 0.0, 1.0, 3.0])
def test_keep_rate_is_the_sigmoid_of_the_logit(logit: float) -> None:
    """Logistic noise with a hard 0.5 threshold keeps a channel with probability sigmoid(logit)."""
    n = 40_000
    mask = gumbel_sigmoid_straight_through(torch.full((n,), logit), generator=torch.Generator().manual_seed(1))
    p = torch.sigmoid(torch.tensor(logit)).item()
    assert abs(mask.mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5


def test_hard_decision_does_not_depend_on_temperature() -> None:
    logits = torch.randn(5000)
    masks = [
        gumbel_sigmoid_straight_through(logits, temperature=t, generator=torch.Generator().manual_seed(2))
        for t in (0.1, GUMBEL_TEMPERATURE, 5.0)
    ]
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    other_seed = gumbel_sigmoid_straight_through(logits, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(masks[0], other_seed)


# -- ChannelGate --------------------------------------------------------------------------------------

def _gate(randomize_gates: Callable) -> ChannelGate:
    gate = ChannelGate(16, 8, 32)
    gate.reset_parameters()
    return randomize_gates(gate)


def test_eval_gate_keeps_channels_whose_probability_reaches_the_threshold(randomize_gates: Callable) -> None:
    gate = _gate(randomize_gates).eval()
    x = torch.randn(4, 16, 8, 8)
    with torch.no_grad():
        probabilities = torch.sigmoid(gate.logits(x))
        kept = []
        for threshold in np.linspace(0.1, 0.9, 9):
            mask = gate(x, float(threshold))
            assert mask.shape == (4, 32)
            assert torch.equal(mask, (probabilities >= threshold).float())
            kept.append(mask.sum(dim=1))
    kept_counts = torch.stack(kept)  # (thresholds, batch)
    assert (kept_counts[1:] <= kept_counts[:-1]).all(), "a higher threshold must never keep more channels"
    assert (kept_counts[-1] < kept_counts[0]).all()
    assert (kept_counts[0] > 0).all() and (kept_counts[-1] < 32).all()


@pytest.mark.parametrize(("init_bias", "low", "high"), [(0.0, 0.45, 0.55), (2.0, 0.85, 0.91)])
def test_fresh_gates_start_at_the_sigmoid_of_their_bias(init_bias: float, low: float, high: float) -> None:
    # Krishna et al.: no bias, about half the channels open; a bias of 2 opens about 88%
    gate = ChannelGate(16, 8, 32, init_bias=init_bias)
    gate.reset_parameters()
    gate.eval()
    with torch.no_grad():
        probabilities = torch.sigmoid(gate.logits(torch.randn(4, 16, 8, 8)))
    assert ((probabilities > low) & (probabilities < high)).all()


def test_training_at_a_threshold_keeps_with_probability_sigmoid_of_the_shifted_logit() -> None:
    """Keep iff logit + logistic noise >= logit(t): P(keep) = sigmoid(logit - logit(t)); noise-free it is
    exactly the inference rule sigmoid(logit) >= t."""
    gate = ChannelGate(4, 8, 3)
    gate.reset_parameters()
    with torch.no_grad():
        gate.fc2.weight.zero_()
        gate.fc2.bias.copy_(torch.tensor([-1.0, 0.0, 1.5]))
    gate.train()
    x = torch.randn(4000, 4, 2, 2)
    torch.manual_seed(0)
    for threshold in (0.2, 0.5, 0.8):
        rate = gate(x, threshold).mean(dim=0)
        expected = torch.sigmoid(gate.fc2.bias - torch.logit(torch.tensor(threshold)))
        torch.testing.assert_close(rate, expected, atol=0.03, rtol=0)


def test_training_gate_is_hard_and_differentiable(randomize_gates: Callable) -> None:
    gate = _gate(randomize_gates).train()
    x = torch.randn(4, 16, 8, 8)
    mask = gate(x, 0.9)  # training samples, around the threshold
    assert ((mask == 0) | (mask == 1)).all() and 0 < mask.sum() < mask.numel()
    (mask * torch.randn(4, 32)).sum().backward()
    assert gate.fc2.weight.grad.abs().sum() > 0 and gate.fc1.weight.grad.abs().sum() > 0


def test_gate_width_follows_the_active_inner_width() -> None:
    space = get_space("tiny")
    net = build_supernet(space).eval()
    cfg = space.uniform_config(0.5, gate_threshold=0.5)
    net.set_active(cfg)
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    block = net.layer2[0]
    assert block.last_mask.shape == (2, cfg.channels["layer2.0.conv1"])


def test_masked_training_records_differentiable_flops_saved(randomize_gates: Callable) -> None:
    space = get_space("tiny")
    net = randomize_gates(build_supernet(space)).train()
    cfg = space.max_config(gate_threshold=0.5)
    net.set_active(cfg)
    x = torch.randn(3, 3, 32, 32)
    net(x)
    saved = net.gate_flops_saved()
    assert saved.shape == (3,) and (saved > 0).all()
    # closed form: one dropped inner channel of a basic block saves conv1's filter, its BN, conv2's slice
    block = net.layer2[0]
    c_in, inner, c_out, side = 32, 64, 64, 16
    assert block.inner_channel_flops == side * side * (c_in * 9 + 2 + c_out * 9)
    dropped = sum((b.last_mask.shape[1] - b.last_mask.sum(dim=1)) * b.inner_channel_flops for b in net.gated_blocks())
    torch.testing.assert_close(saved, dropped)
    assert inner == cfg.channels["layer2.0.conv1"]
    saved.sum().backward()
    assert block.gate.fc2.weight.grad.abs().sum() > 0


# -- masked vs gathered execution ---------------------------------------------------------------------

GATHER_SPACES = {"resnet18": "basic", "resnet50": "bottleneck", "mobilenet_v2": "inverted_residual"}


@pytest.mark.parametrize("name", sorted(GATHER_SPACES))
def test_gathered_batch1_equals_masked(name: str, make_gated_subnet: Callable, resolution_of: Callable) -> None:
    space = get_space(name)
    assert {block.kind for block in space.gated_blocks} == {GATHER_SPACES[name]}
    dead_block = 1
    _, sub, _ = make_gated_subnet(space, dead_block=dead_block)
    resolution = resolution_of(space)
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        masked = sub(x)
        masks = [block.last_mask for block in sub.gated_blocks()]
        assert masks[dead_block].sum() == 0
        live = torch.cat([m.flatten() for i, m in enumerate(masks) if i != dead_block])
        assert 0.1 < live.mean() < 0.9, "gates should drop a real fraction of channels"
        sub.set_gate_mode("gathered")
        gathered = torch.cat([sub(x[i : i + 1]) for i in range(x.shape[0])])
        batched_in_gathered_mode = sub(x)  # batch > 1 falls back to masks
    torch.testing.assert_close(gathered, masked, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched_in_gathered_mode, masked, rtol=0, atol=0)


# -- separate BatchNorm for the gated branch (Krishna et al.'s --separate_bn) ----------------------------
def _separate(space, seed: int = 0):
    from tests.conftest import randomize_batchnorm, randomize_gate_logits

    net = build_supernet(space, gate_options=GateOptions(separate_norms=True))
    net = randomize_gate_logits(randomize_batchnorm(net, seed=seed), seed=seed)
    with torch.no_grad():  # the gated twins get statistics of their own
        for module in net.modules():
            if isinstance(module, BranchBatchNorm2d):
                module.gated.running_mean.normal_(0.0, 0.3)
                module.gated.weight.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "inverted_residual"])
def test_gated_passes_use_their_own_batchnorm_and_dense_passes_do_not(kind: str, small_spaces) -> None:
    space = small_spaces[kind]
    net = _separate(space)
    block = dict(net.named_modules())[space.gated_blocks[-1].name]
    assert any(name.endswith(".gated.weight") for name in net.state_dict())
    x = torch.randn(2, 3, space.default_resolution, space.default_resolution)
    dense_cfg = space.uniform_config(0.75)
    thresholds = {b.name: 0.5 for b in space.gated_blocks}
    with torch.no_grad():
        net.set_active(dense_cfg)
        dense = net(x)
        net.set_active(dense_cfg.with_gates(thresholds))
        gated = net(x)
        for name in block.branch_norm_names:  # perturb the gated twins: only the gated pass may move
            block.get_submodule(name).gated.bias.add_(1.0)
        gated_after = net(x)
        net.set_active(dense_cfg)
        dense_after = net(x)
    torch.testing.assert_close(dense_after, dense, rtol=0, atol=0)
    assert not torch.allclose(gated_after, gated)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "inverted_residual"])
def test_separate_norms_extract_and_gather_exactly(kind: str, small_spaces) -> None:
    space = small_spaces[kind]
    net = _separate(space, seed=1)
    cfg = space.uniform_config(0.75).with_gates({b.name: 0.5 for b in space.gated_blocks})
    x = torch.randn(3, 3, space.default_resolution, space.default_resolution)
    sub = net.extract(cfg).eval()
    with torch.no_grad():
        net.set_active(cfg)
        expected = net(x)
        torch.testing.assert_close(sub(x), expected, rtol=1e-5, atol=1e-5)
        sub.set_gate_mode("gathered")
        gathered = torch.cat([sub(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(gathered, expected, rtol=1e-4, atol=1e-4)
    static = net.extract(space.uniform_config(0.75))  # a static sub-network needs no gated twins
    assert not any(".gated." in name for name in static.state_dict())
