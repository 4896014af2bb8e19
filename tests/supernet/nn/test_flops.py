"""FLOPs (fvcore: one multiply-add = one flop): closed form, monotonicity, effective FLOPs of gates,
torchvision parity."""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import numpy as np
import pytest
import torch
import torchvision

from nas.cost import count_flops, count_params, effective_flops, static_flops
from search_spaces import SearchSpace, SubnetConfig, get_space
from supernet import build_supernet
from supernet.nn.flops import (
    FlopCountAnalysis,
    ShapeFlopCounter,
    folded_norm_flops,
    per_input_effective_flops,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = get_space("tiny")


# -- closed form --------------------------------------------------------------------------------------

def _conv(c_in: int, c_out: int, kernel: int, stride: int, size: int) -> tuple[int, int]:
    """(FLOPs, output size) of a dense square conv with padding kernel // 2."""
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return c_out * out * out * c_in * kernel * kernel, out


def _bn(channels: int, size: int) -> int:
    return 2 * channels * size * size  # inference BN with affine parameters


def _gate(c_in: int, size: int, hidden: int, inner: int) -> int:
    # avgpool (1 per input element) -> 1x1 conv C_in->hidden -> BN -> 1x1 conv hidden->inner, on 1x1 maps
    return c_in * size * size + hidden * c_in + 2 * hidden + inner * hidden


def tiny_flops(channels: Mapping[str, int], resolution: int, *, num_classes: int = 0, gated: bool = False) -> int:
    """fvcore FLOPs of the ``tiny`` architecture, written from the architecture, not from the code:
    CIFAR stem (3x3 s1 conv + BN), layer1.0 basic block (stride 1, identity shortcut), layer2.0
    basic block (stride 2, 1x1 s2 downsample conv + BN), global average pool, optional linear head."""
    stem, inner1, inner2, out2 = (
        channels["conv1"], channels["layer1.0.conv1"], channels["layer2.0.conv1"], channels["layer2.0.conv2"]
    )
    assert channels["layer1.0.conv2"] == stem  # identity shortcut
    assert channels["layer2.0.downsample.0"] == out2
    size = resolution
    flops, size = _conv(3, stem, 3, 1, size)
    flops += _bn(stem, size)
    # layer1.0
    conv, _ = _conv(stem, inner1, 3, 1, size)
    flops += conv + _bn(inner1, size)
    conv, _ = _conv(inner1, stem, 3, 1, size)
    flops += conv + _bn(stem, size)
    # layer2.0
    conv, half = _conv(stem, inner2, 3, 2, size)
    flops += conv + _bn(inner2, half)
    conv, _ = _conv(inner2, out2, 3, 1, half)
    flops += conv + _bn(out2, half)
    conv, down = _conv(stem, out2, 1, 2, size)
    assert down == half
    flops += conv + _bn(out2, half)
    flops += out2 * half * half  # adaptive average pool
    flops += out2 * num_classes  # linear (bias not counted)
    if gated:
        hidden1, hidden2 = (block.gate_hidden_channels for block in TINY.blocks)
        flops += _gate(stem, size, hidden1, inner1) + _gate(stem, size, hidden2, inner2)
    return flops


def _tiny_cases() -> list[tuple[SubnetConfig, int]]:
    rng = np.random.default_rng(11)
    return [
        (TINY.min_config(), 32),
        (TINY.max_config(), 32),
        (TINY.sample(rng), 32),
        (TINY.uniform_config(0.5), 24),
        (TINY.sample(rng), 17),  # odd size: the stride-2 convs round up
    ]


def test_tiny_flops_match_the_closed_form() -> None:
    net = build_supernet(TINY, num_classes=10, with_gates=True)
    for cfg, resolution in _tiny_cases():
        sub = net.extract(cfg)
        assert count_flops(sub, resolution) == tiny_flops(cfg.channels, resolution, num_classes=10), (cfg, resolution)


@pytest.mark.parametrize("resolution", [32, 17])
def test_tiny_gated_flops_match_the_closed_form(resolution: int) -> None:
    """Gates on, every channel counted (static): the gates' pool, 1x1 convs and BN are added."""
    net = build_supernet(TINY, num_classes=10, with_gates=True)
    cfg = TINY.sample(np.random.default_rng(12)).with_gates({"layer1.0": 0.3, "layer2.0": 0.7})
    expected = tiny_flops(cfg.channels, resolution, num_classes=10, gated=True)
    assert count_flops(net.extract(cfg), resolution) == expected
    # the supernet at the active config costs what its extraction costs
    net.set_active(cfg)
    assert static_flops(net, resolution) == expected


def test_count_flops_of_given_inputs_scales_with_batch() -> None:
    sub = build_supernet(TINY).extract(TINY.uniform_config(0.5))
    one = count_flops(sub, 32)
    assert count_flops(sub, inputs=torch.randn(3, 3, 32, 32)) == 3 * one
    with pytest.raises(ValueError, match="resolution"):
        count_flops(sub)


def test_matrix_vector_products_count_one_flop_per_multiply_add() -> None:
    """matmul with a vector operand (fvcore's own handle asserts on it), mv and addmv count one flop per
    multiply-add: (B, C, N) @ (N,) is B * C * N; matrix products count as fvcore counts them."""

    class Products(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = torch.matmul(x.flatten(2), torch.full((16,), 1 / 16))  # (2, 3, 16) @ (16,): 96
            row = torch.matmul(torch.ones(2), pooled)  # (2,) @ (2, 3): 6
            column = torch.mv(pooled, row)  # (2, 3) x (3,): 6
            hidden = torch.addmv(torch.ones(7), torch.ones(7, 2), column)  # (7, 2) x (2,): 14
            return torch.matmul(pooled, torch.ones(3, 5)).sum() + hidden.sum()  # (2, 3) @ (3, 5): 30

    assert count_flops(Products(), inputs=torch.randn(2, 3, 4, 4)) == 96 + 6 + 6 + 14 + 30


def test_count_params() -> None:
    sub = build_supernet(TINY, num_classes=10, with_gates=False).extract(TINY.max_config())
    c = {"conv1": 32, "inner1": 32, "inner2": 64, "out2": 64}
    convs = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 32 * 64
    batch_norms = 2 * (c["conv1"] + c["inner1"] + c["conv1"] + c["inner2"] + c["out2"] + c["out2"])
    assert count_params(sub) == convs + batch_norms + 64 * 10 + 10


# -- monotonicity -------------------------------------------------------------------------------------

def _raised(space: SearchSpace, cfg: SubnetConfig, decision: str) -> SubnetConfig | None:
    choices = space.layer(decision).width_choices
    index = choices.index(cfg.channels[decision])
    if index + 1 == len(choices):
        return None
    widths = {key: cfg.channels[key] for key in space.decisions}
    widths[decision] = choices[index + 1]
    return space.from_decisions(widths, resolution=cfg.resolution)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "inverted_residual"])
def test_flops_rise_with_every_width(kind: str, small_spaces: dict) -> None:
    """Every decision sets the output width of at least one conv, so raising it must raise FLOPs."""
    space = small_spaces[kind]
    net = build_supernet(space, with_gates=False)
    rng = np.random.default_rng(5)
    configs = [space.min_config(), space.sample(rng)]

    def flops(cfg: SubnetConfig) -> int:
        net.set_active(cfg)
        return count_flops(net, space.default_resolution)

    raised_any = set()
    for cfg in configs:
        base = flops(cfg)
        for decision in space.decisions:
            raised = _raised(space, cfg, decision)
            if raised is not None:
                assert flops(raised) > base, (cfg, decision)
                raised_any.add(decision)
    assert raised_any == set(space.decisions)  # the min config lets every decision grow


# -- effective FLOPs of gated networks ----------------------------------------------------------------

GATED_KINDS = ["basic", "bottleneck", "inverted_residual"]


def _kept_channels(sub, cfg: SubnetConfig, space: SearchSpace, index: int) -> dict[str, int]:
    """``cfg``'s channels with every gated layer set to the number of channels input ``index`` kept."""
    modules = dict(sub.named_modules())
    channels = dict(cfg.channels)
    for block in space.gated_blocks:
        channels[block.gated_layer] = int(modules[block.name].last_mask[index].sum())
    return channels


# the BatchNorms on each kind's gated channels, which a gathered run folds into the conv before them
FOLDED_NORMS = {"basic": ("bn1",), "bottleneck": ("bn1",), "inverted_residual": ("conv.0.1", "conv.1.1")}


def _folded_norm_flops_closed_form(sub, space: SearchSpace, kind: str, x: torch.Tensor) -> list[int]:
    """Per input of ``x``: 2 flops (fvcore's inference BN) per element of every folded BatchNorm's kept
    channels, from the masks and the norms' output sizes of a masked forward."""
    modules = dict(sub.named_modules())
    sizes: dict[str, int] = {}
    hooks = [
        modules[f"{block.name}.{norm}"].register_forward_hook(
            lambda _m, _i, out, key=f"{block.name}.{norm}": sizes.__setitem__(key, out.shape[-2] * out.shape[-1])
        )
        for block in space.gated_blocks for norm in FOLDED_NORMS[kind]
    ]
    sub.set_gate_mode("masked")
    with torch.no_grad():
        sub(x)
    for hook in hooks:
        hook.remove()
    return [
        sum(2 * int(modules[block.name].last_mask[i].sum()) * sizes[f"{block.name}.{norm}"]
            for block in space.gated_blocks for norm in FOLDED_NORMS[kind])
        for i in range(x.shape[0])
    ]


def _distinct_inputs(resolution: int) -> torch.Tensor:
    """Two inputs with different statistics, so the gates (which see pooled features) treat them differently."""
    scale, shift = torch.tensor([0.5, 2.0]).view(2, 1, 1, 1), torch.tensor([-0.5, 0.5]).view(2, 1, 1, 1)
    return torch.randn(2, 3, resolution, resolution) * scale + shift


@pytest.mark.parametrize("kind", GATED_KINDS)
def test_effective_flops_equal_gathered_and_static_counts(
    kind: str, small_spaces: dict, make_gated_subnet: Callable
) -> None:
    space = small_spaces[kind]
    net, sub, cfg = make_gated_subnet(space, seed=1)
    resolution = space.default_resolution
    x = _distinct_inputs(resolution)
    per_input = per_input_effective_flops(sub, x)
    assert per_input.shape == (2,) and per_input.dtype == torch.float64
    kept = [_kept_channels(sub, cfg, space, i) for i in range(2)]
    assert kept[0] != kept[1], "the two inputs should keep different channels"
    assert all(0 < k[b.gated_layer] < cfg.channels[b.gated_layer] for k in kept for b in space.gated_blocks)
    mean = effective_flops(sub, [x[:1], x[1:]], resolution=resolution)
    assert mean == pytest.approx(per_input.mean().item(), abs=0.5)

    full = static_flops(sub, resolution)
    gate_flops = full - count_flops(net.extract(cfg.with_gates(None)), resolution)
    assert gate_flops > 0
    folded = _folded_norm_flops_closed_form(sub, space, kind, x)
    assert all(f > 0 for f in folded)
    assert folded_norm_flops(sub, x).tolist() == folded
    sub.set_gate_mode("gathered")
    for i in range(2):
        # effective FLOPs count the network as defined; the gathered run executes its BNs folded
        gathered = count_flops(sub, inputs=x[i : i + 1])
        static = build_supernet(space.narrow(kept[i]), with_gates=False)
        assert per_input[i].item() == gathered + folded[i] == count_flops(static, resolution) + gate_flops
        assert gathered < full
    assert sub.gate_mode == "gathered"  # counting left the mode alone


@pytest.mark.parametrize("kind", GATED_KINDS)
def test_effective_flops_with_a_block_that_keeps_nothing(
    kind: str, small_spaces: dict, make_gated_subnet: Callable
) -> None:
    space = small_spaces[kind]
    _, sub, _ = make_gated_subnet(space, seed=2, dead_block=1)
    x = _distinct_inputs(space.default_resolution)
    per_input = per_input_effective_flops(sub, x)
    dead = dict(sub.named_modules())[space.gated_blocks[1].name]
    assert dead.last_mask.sum() == 0
    folded = _folded_norm_flops_closed_form(sub, space, kind, x)
    with torch.no_grad():
        masked = sub(x)
    sub.set_gate_mode("gathered")
    for i in range(2):
        assert per_input[i].item() == count_flops(sub, inputs=x[i : i + 1]) + folded[i]
        with torch.no_grad():
            torch.testing.assert_close(sub(x[i : i + 1]), masked[i : i + 1], rtol=1e-5, atol=1e-5)


def test_effective_flops_without_gates_are_static() -> None:
    sub = build_supernet(TINY).extract(TINY.uniform_config(0.5))
    x = torch.randn(3, 3, 32, 32)
    expected = tiny_flops(TINY.uniform_config(0.5).channels, 32)
    assert effective_flops(sub, [x], resolution=32) == expected
    assert torch.equal(per_input_effective_flops(sub, x), torch.full((3,), float(expected), dtype=torch.float64))
    with pytest.raises(ValueError, match="no inputs"):
        effective_flops(sub, [], resolution=32)


# -- torchvision parity -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", 1_819_065_856), ("resnet50", 4_111_512_576), ("mobilenet_v2", None)],
)
def test_max_width_flops_equal_torchvision(name: str, expected: int | None) -> None:
    net = build_supernet(name, num_classes=1000, with_gates=False)
    reference = getattr(torchvision.models, name)(weights=None)
    flops = count_flops(net, 224)
    assert flops == count_flops(reference, 224)
    if expected is not None:
        assert flops == pytest.approx(expected, rel=1e-3)
    else:
        # MobileNetV2 = 0.30 GFLOPs counting convolutions and the classifier only
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis = FlopCountAnalysis(net.eval(), torch.zeros(1, 3, 224, 224))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator = analysis.by_operator()
        assert by_operator["conv"] + by_operator["linear"] == pytest.approx(0.30e9, rel=0.01)


@pytest.mark.parametrize("kind", ["basic", "bottleneck", "inverted_residual", "vit"])
def test_shape_counter_equals_fvcore_on_random_configs(kind: str, small_spaces: dict) -> None:
    """The training loop's FLOP counter (shapes of a CPU copy, blocks cached) against fvcore's trace."""
    space = get_space("vit_test") if kind == "vit" else small_spaces[kind]
    network = build_supernet(space)
    resolution = space.default_resolution
    counter = ShapeFlopCounter(network, resolution)
    rng = np.random.default_rng(0)
    configs = [space.sample(rng, min_multiplier=0.25) for _ in range(4)] + [space.max_config(), space.min_config()]
    configs += [cfg.with_gates({block.name: 0.5 for block in space.gated_blocks}) for cfg in configs]
    for cfg in configs + configs[:3]:  # the repeats are answered from the blocks' caches
        network.set_active(cfg)
        assert counter(cfg) == static_flops(network, resolution), cfg
    assert counter(space.max_config()) == count_flops(network.extract(space.max_config()), resolution)
