"""Dynamic channel gates: Gumbel-sigmoid straight-through, thresholds, masked vs gathered execution."""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from search_spaces import get_space
from supernet import build_supernet
from supernet.nn.gates import (
    GUMBEL_TEMPERATURE,
    ChannelGate,
    GateOptions,
    gumbel_sigmoid_straight_through,
)
from supernet.nn.ops import (
    BranchBatchNorm2d,
    DynamicBatchNorm2d,
    fold_batch_norm,
    gated_pass_norm,
    gathered_conv2d,
)

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


def test_fold_batch_norm_equals_conv_then_norm(randomize_bn: Callable) -> None:
    """Folding holds for a prefix of the norm's channels (a narrower active width) and for depthwise convs."""
    norm = randomize_bn(DynamicBatchNorm2d(16)).eval()
    x = torch.randn(2, 8, 9, 9)
    for weight, groups in ((torch.randn(12, 8, 3, 3), 1), (torch.randn(8, 1, 3, 3), 8)):
        folded_weight, folded_bias = fold_batch_norm(weight, norm)
        assert folded_weight.shape == weight.shape and folded_bias.shape == (weight.shape[0],)
        with torch.no_grad():
            expected = norm(F.conv2d(x, weight, None, 1, 1, 1, groups))
            folded = F.conv2d(x, folded_weight, folded_bias, 1, 1, 1, groups)
        torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel", "stride", "groups"),
    [(37, 64, 3, 1, 1), (64, 19, 3, 2, 1), (21, 21, 3, 1, 21), (40, 24, 1, 1, 1)],
)
def test_gathered_conv2d_equals_conv2d(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int) -> None:
    x = torch.randn(1, in_channels, 7, 7)
    weight = torch.randn(out_channels, in_channels // groups, kernel, kernel)
    bias = torch.randn(out_channels)
    padding = (kernel // 2, kernel // 2)
    with torch.no_grad():
        out = gathered_conv2d(x, weight, bias, stride=(stride, stride), padding=padding, groups=groups)
        traced = torch.jit.trace(
            lambda x: gathered_conv2d(x, weight, bias, stride=(stride, stride), padding=padding, groups=groups), x,
            check_trace=False,
        )
    expected = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    # tracers (fvcore's FLOP counter, torch.onnx) see the standard op
    assert "aten::_convolution" in str(traced.graph) and "mkldnn" not in str(traced.graph)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a oneDNN build")
def test_narrow_gathered_conv_keeps_the_onednn_kernel() -> None:
    """A batch-1 3x3 conv with <= 20,480 input elements would fall onto ATen's slower im2col kernel."""
    x, weight = torch.randn(1, 250, 7, 7), torch.randn(512, 250, 3, 3)
    with torch.no_grad(), torch.profiler.profile() as profiler:
        gathered_conv2d(x, weight, None, stride=(1, 1), padding=(1, 1))
        F.conv2d(x, weight, None, 1, 1)
    ops = {event.key for event in profiler.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::_slow_conv2d_forward" in ops


def _gathered(net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[i : i + 1]) for i in range(x.shape[0])])


def _masked_reference(net, x: torch.Tensor) -> torch.Tensor:
    """The masked (batched) output of a copy of ``net``, whose own mode and cache stay as they are."""
    reference = copy.deepcopy(net)
    reference.set_gate_mode("masked")
    with torch.no_grad():
        return reference(x)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "inverted_residual"])
def test_gathered_mode_folds_once_and_sees_weight_changes(kind: str, small_spaces, make_gated_subnet) -> None:
    space = small_spaces[kind]
    _, sub, _ = make_gated_subnet(space, seed=3)
    x = torch.randn(2, 3, space.default_resolution, space.default_resolution)
    blocks = list(sub.gated_blocks())
    sub.set_gate_mode("gathered")
    assert all(len(block._folded) == len(block.folded_norms) > 0 for block in blocks), "folded at the mode switch"
    folded = [folded.weight for block in blocks for folded in block._folded.values()]
    before = _gathered(sub, x)
    torch.testing.assert_close(before, _masked_reference(sub, x), rtol=1e-5, atol=1e-5)
    assert [f.weight for b in blocks for f in b._folded.values()] == folded  # reused, not refolded per input
    state = copy.deepcopy(sub.state_dict())

    sub.set_gate_mode("masked")
    assert not any(block._folded for block in blocks)
    block = blocks[-1]
    conv_name, norm_name = block.folded_norms[0]
    with torch.no_grad():  # changed while masked, then gathered again
        block.get_submodule(conv_name).weight.mul_(1.5)
        gated_pass_norm(block.get_submodule(norm_name)).running_var.mul_(2.0)
    sub.set_gate_mode("gathered")
    changed = _gathered(sub, x)
    torch.testing.assert_close(changed, _masked_reference(sub, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(changed, before)

    with torch.no_grad():  # changed in place while gathered: the fold is stale and redone
        gated_pass_norm(block.get_submodule(norm_name)).bias.add_(0.5)
    edited = _gathered(sub, x)
    torch.testing.assert_close(edited, _masked_reference(sub, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(edited, changed)

    sub.load_state_dict(state)  # loaded while gathered
    torch.testing.assert_close(_gathered(sub, x), before, rtol=0, atol=0)

    sub.train()  # training drops the folds; the next gathered forward refolds
    assert not any(block._folded for block in blocks)
    sub.eval()
    torch.testing.assert_close(_gathered(sub, x), before, rtol=0, atol=0)


def test_gathered_without_set_gate_mode_folds_on_first_use(small_spaces, make_gated_subnet) -> None:
    """``block.gather = True`` set directly (as nas.latency.entries does) works: the fold is built lazily."""
    space = small_spaces["inverted_residual"]
    _, sub, _ = make_gated_subnet(space, seed=5)
    x = torch.randn(2, 3, space.default_resolution, space.default_resolution)
    expected = _masked_reference(sub, x)
    for block in sub.gated_blocks():
        block.gather = True
    torch.testing.assert_close(_gathered(sub, x), expected, rtol=1e-5, atol=1e-5)
    assert all(block._folded for block in sub.gated_blocks())


def test_gathered_path_stays_differentiable(small_spaces, make_gated_subnet) -> None:
    space = small_spaces["basic"]
    _, sub, _ = make_gated_subnet(space, seed=4)
    sub.set_gate_mode("gathered")
    x = torch.randn(1, 3, space.default_resolution, space.default_resolution)
    sub(x).square().sum().backward()  # eval, batch 1, gradients on: folded on the fly
    blocks = list(sub.gated_blocks())
    assert sum(block.conv1.weight.grad.abs().sum() for block in blocks) > 0
    assert sum(gated_pass_norm(block.bn1).weight.grad.abs().sum() for block in blocks) > 0
    assert all(block.bn1.weight.grad is None for block in blocks if block.bn1 is not gated_pass_norm(block.bn1))


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


def test_bfloat16_logits_draw_float32_noise() -> None:
    """Under autocast the gate logits are bfloat16; the noise must still be float32's (issue 21 item 9): the same
    draws as float32 logits of the same values, and the tails intact (bfloat16 uniforms cut them at about +-5.5,
    so a logit of -6 never kept its channel)."""
    generator = torch.Generator().manual_seed(4)
    logits = (torch.randn(4096, generator=generator) * 3).to(torch.bfloat16)
    half = gumbel_sigmoid_straight_through(logits, generator=torch.Generator().manual_seed(6))
    full = gumbel_sigmoid_straight_through(logits.float(), generator=torch.Generator().manual_seed(6))
    assert half.dtype == torch.bfloat16
    assert torch.equal(half.float(), full)
    n = 400_000
    kept = gumbel_sigmoid_straight_through(torch.full((n,), -6.0, dtype=torch.bfloat16),
                                           generator=torch.Generator().manual_seed(7)).float().mean()
    expected = 1 / (1 + math.exp(6.0))  # 0.25 %
    assert abs(float(kept) - expected) < 5 * math.sqrt(expected / n)


def test_bfloat16_logits_pass_the_relaxed_gradient() -> None:
    logits = torch.zeros(64, dtype=torch.bfloat16, requires_grad=True)
    gumbel_sigmoid_straight_through(logits, generator=torch.Generator().manual_seed(8)).sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16 and bool((logits.grad > 0).all())
