"""Supernets: extraction equals the supernet at its active config, the API, torchvision parity."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from search_spaces import ConfigError, get_space, list_spaces
from supernet import build_supernet
from supernet.nn.blocks import GatedBlock
from supernet.nn.flops import count_params
from supernet.nn.ops import DynamicConv2d

pytestmark = pytest.mark.usefixtures("single_thread")


def _assert_outputs_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize("gates", [False, True], ids=["gates_off", "gates_on"])
@pytest.mark.parametrize("name", list_spaces())
def test_extracted_network_equals_supernet_at_active_config(
    name: str, gates: bool, randomize_bn: Callable, randomize_gates: Callable, resolution_of: Callable
) -> None:
    space = get_space(name)
    net = randomize_gates(randomize_bn(build_supernet(space, with_gates=gates))).eval()
    resolution = resolution_of(space)
    x = torch.randn(2, 3, resolution, resolution)
    cfg = space.sample(np.random.default_rng(sum(map(ord, name))), gates=gates)
    assert cfg.channels != space.max_config().channels
    net.set_active(cfg)
    with torch.no_grad():
        expected = net(x)
        if gates:
            kept = torch.cat([block.last_mask.flatten() for block in net.gated_blocks()])
            assert 0 < kept.sum() < kept.numel(), "gates should drop some channels and keep others"
        sub = net.extract(cfg)
        actual = sub(x)
    assert not sub.training
    assert sub.source_config == cfg
    assert expected.shape == (2, net.feature_dim) == (2, sub.feature_dim)
    assert any(True for _ in sub.gated_blocks()) == gates
    assert count_params(sub) < count_params(net)
    _assert_outputs_equal(actual, expected)


def test_extracted_network_owns_copies_of_the_weights(randomize_bn: Callable) -> None:
    space = get_space("tiny")
    net = randomize_bn(build_supernet(space)).eval()
    cfg = space.uniform_config(0.5)
    net.set_active(cfg)
    sub = net.extract(cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = sub(x)
        for parameter in net.parameters():
            parameter.add_(1.0)
        after = sub(x)
        assert not torch.allclose(net(x), before)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_extracted_shapes_are_the_config_widths() -> None:
    space = get_space("resnet50_cifar")
    net = build_supernet(space, num_classes=10)
    cfg = space.sample(np.random.default_rng(0))
    sub = net.extract(cfg)
    modules = dict(sub.named_modules())
    for layer, channels in cfg.channels.items():
        assert modules[layer].weight.shape[0] == channels, layer
    assert sub.fc.weight.shape == (10, cfg.channels["layer4.2.conv3"])
    assert count_params(sub) == count_params(
        build_supernet(space.narrow(cfg.channels), num_classes=10, with_gates=False)
    )


def test_set_max_after_a_subnet_restores_the_full_network(randomize_bn: Callable) -> None:
    space = get_space("mobilenet_v2_cifar")
    net = randomize_bn(build_supernet(space)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = net(x)
        net.set_min()
        small = net(x)
        assert small.shape[1] < full.shape[1]
        assert net.set_max() == space.max_config() == net.active_config
        again = net(x)
    torch.testing.assert_close(again, full, rtol=0, atol=0)


def test_sample_active_is_seeded_and_activates(rng: np.random.Generator) -> None:
    net = build_supernet("tiny")
    cfg = net.sample_active(np.random.default_rng(7), gates=True)
    assert net.active_config == cfg == get_space("tiny").sample(np.random.default_rng(7), gates=True)
    assert all(block.gate_threshold == cfg.gate_thresholds[name]
               for name, block in net.named_modules() if isinstance(block, GatedBlock))
    assert net.layer1[0].conv1.active_out == cfg.channels["layer1.0.conv1"]
    assert net.set_min() == get_space("tiny").min_config() == net.active_config


def test_output_width_follows_the_active_config() -> None:
    space = get_space("tiny")
    features = build_supernet(space)
    logits = build_supernet(space, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    for cfg in (space.min_config(), space.uniform_config(0.5), space.max_config()):
        features.set_active(cfg)
        logits.set_active(cfg)
        assert features(x).shape == (2, cfg.channels["layer2.0.conv2"]) == (2, features.feature_dim)
        assert logits(x).shape == (2, 10)


def test_gradients_reach_only_the_active_slices() -> None:
    """Slicing, not masking: the weights a sub-network does not use get exactly zero gradient."""
    space = get_space("tiny")
    net = build_supernet(space).train()
    cfg = space.uniform_config(0.5)
    net.set_active(cfg)
    net(torch.randn(4, 3, 32, 32)).square().sum().backward()
    conv = net.layer2[0].conv1
    out_width, in_width = cfg.channels["layer2.0.conv1"], cfg.channels["conv1"]
    assert conv.weight.grad[:out_width, :in_width].abs().sum() > 0
    assert conv.weight.grad[out_width:].abs().sum() == 0
    assert conv.weight.grad[:, in_width:].abs().sum() == 0
    bn = net.layer2[0].bn1
    assert bn.weight.grad[out_width:].abs().sum() == 0 and bn.weight.grad[:out_width].abs().sum() > 0


def test_training_mode_updates_only_the_active_running_statistics() -> None:
    net = build_supernet("tiny").train()
    cfg = get_space("tiny").min_config()
    net.set_active(cfg)
    with torch.no_grad():
        net(torch.randn(4, 3, 32, 32) + 1.0)
    width = cfg.channels["conv1"]
    assert net.bn1.running_mean[:width].abs().min() > 0
    assert torch.equal(net.bn1.running_mean[width:], torch.zeros(net.bn1.num_features - width))


def test_set_active_rejects_configs_that_do_not_fit() -> None:
    net = build_supernet("tiny")
    with pytest.raises(ConfigError, match="space: config is for 'resnet18_cifar'"):
        net.set_active(get_space("resnet18_cifar").max_config())
    wrong_width = get_space("tiny").max_config()
    wrong_width = type(wrong_width)("tiny", {**wrong_width.channels, "layer1.0.conv1": 12}, None, 32)
    with pytest.raises(ConfigError, match=r"channels\['layer1.0.conv1'\]"):
        net.set_active(wrong_width)
    assert net.active_config == get_space("tiny").max_config()  # a rejected config changes nothing
    ungated = build_supernet("tiny", with_gates=False)
    with pytest.raises(ValueError, match="gate_thresholds"):
        ungated.set_active(get_space("tiny").max_config(gate_threshold=0.5))


def test_set_gate_mode() -> None:
    net = build_supernet("tiny")
    assert net.gate_mode == "masked"
    net.set_gate_mode("gathered")
    assert net.gate_mode == "gathered" and all(block.gather for block in net.gated_blocks())
    for bad in ("gather", "Masked", None):
        with pytest.raises(ValueError, match="gate mode"):
            net.set_gate_mode(bad)  # type: ignore[arg-type]
    assert net.gate_mode == "gathered"


def test_gate_thresholds_none_switches_gates_off(randomize_bn: Callable, randomize_gates: Callable) -> None:
    """A gated supernet at a config without thresholds computes exactly the ungated network."""
    space = get_space("tiny")
    gated = randomize_gates(randomize_bn(build_supernet(space, with_gates=True))).eval()
    plain = build_supernet(space, with_gates=False).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if ".gate." not in k})
    cfg = space.sample(np.random.default_rng(0))
    gated.set_active(cfg)
    plain.set_active(cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(gated(x), plain(x), rtol=0, atol=0)
        gated.set_active(cfg.with_gates({block.name: 0.5 for block in space.gated_blocks}))
        assert not torch.allclose(gated(x), plain(x))


# -- torchvision parity -------------------------------------------------------------------------------

TORCHVISION = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_max_width_is_the_torchvision_architecture(name: str, randomize_bn: Callable) -> None:
    reference = randomize_bn(TORCHVISION[name](weights=None)).eval()
    net = build_supernet(name, num_classes=1000, with_gates=False).eval()
    assert count_params(net) == count_params(reference)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    net.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        actual = net(x)
    _assert_outputs_equal(actual, expected)
    # and it still is a supernet: a smaller config runs on the loaded weights
    net.set_min()
    assert net(x).shape == (2, 1000)


def test_all_searchable_convs_are_bound() -> None:
    """Every searchable layer's conv follows set_active; no DynamicConv2d of the backbone is left out."""
    for name in list_spaces():
        space = get_space(name)
        net = build_supernet(space, with_gates=False)
        cfg = space.min_config()
        net.set_active(cfg)
        modules = dict(net.named_modules())
        for layer, channels in cfg.channels.items():
            assert modules[layer].active_out == channels, (name, layer)
        bound = {id(modules[layer]) for layer in cfg.channels}
        for module_name, module in net.named_modules():
            if isinstance(module, DynamicConv2d) and not module.depthwise:
                assert id(module) in bound, (name, module_name)


def test_extract_copies_running_statistics(randomize_bn: Callable) -> None:
    net = randomize_bn(build_supernet("tiny"))
    cfg = get_space("tiny").uniform_config(0.5)
    sub = net.extract(cfg)
    width = cfg.channels["layer1.0.conv1"]
    assert torch.equal(sub.layer1[0].bn1.running_var, net.layer1[0].bn1.running_var[:width])
    assert torch.equal(sub.layer1[0].bn1.weight, net.layer1[0].bn1.weight[:width])
    # extraction leaves the supernet untouched
    assert net.active_config == get_space("tiny").max_config()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.extract(get_space("tiny").min_config())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(sub, nn.Module) and type(sub) is type(net)
