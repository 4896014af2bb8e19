"""Search-space specs: registry, width choices, ties, space size, sampling, torchvision naming."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torchvision
from torch import nn

from search_spaces import (
    ConfigError,
    SearchSpace,
    get_space,
    list_spaces,
    width_choices_for,
)
from search_spaces.spec import DEFAULT_MULTIPLIERS

ALL_SPACES = list_spaces()


def _decision_groups(space: SearchSpace) -> list[set[str]]:
    """Layers that must share one width, computed from ``space.ties`` by union-find (independently of
    ``space.decisions``)."""
    parent = {name: name for name in space.layer_names}

    def find(name: str) -> str:
        while parent[name] != name:
            name = parent[name]
        return name

    for group in space.ties:
        for name in group[1:]:
            parent[find(name)] = find(group[0])
    groups: dict[str, set[str]] = {}
    for name in space.layer_names:
        groups.setdefault(find(name), set()).add(name)
    return list(groups.values())


def test_registry_names_the_documented_spaces() -> None:
    assert set(ALL_SPACES) == {
        "resnet18", "resnet34", "resnet50", "resnet18_cifar", "resnet50_cifar",
        "mobilenet_v2", "mobilenet_v2_cifar", "tiny", "small", "vit_tiny", "vit_tiny_cifar", "vit_test",
    }
    for name in ALL_SPACES:
        assert get_space(name).name == name


def test_unknown_space_error_lists_valid_names() -> None:
    with pytest.raises(KeyError) as info:
        get_space("resnet19")
    message = info.value.args[0]
    assert "resnet19" in message
    assert all(name in message for name in ALL_SPACES)


def test_width_choices_for() -> None:
    assert width_choices_for(64) == (16, 24, 32, 40, 48, 56, 64)
    assert width_choices_for(32) == (8, 16, 24, 32)
    # an odd maximum stays reachable; smaller choices are multiples of 8 and never exceed it
    assert width_choices_for(20) == (8, 16, 20)
    assert width_choices_for(3) == (3,)


@pytest.mark.parametrize("name", ALL_SPACES)
def test_layers_blocks_and_width_choices_are_consistent(name: str) -> None:
    space = get_space(name)
    names = space.layer_names
    assert len(set(names)) == len(names)
    assert space.stem_layer in names
    for block in space.blocks:
        for layer in (block.in_layer, *block.inner_layers, block.out_layer):
            assert layer in names, (block.name, layer)
        if block.shortcut_layer is not None:
            assert block.shortcut_layer in names
        if block.gated:
            assert block.inner_layers, f"{block.name} is gated but has no inner channels to gate"
    for layer in space.layers:
        choices = layer.width_choices
        assert list(choices) == sorted(set(choices))
        assert choices[-1] == layer.max_channels
        assert all(c % 8 == 0 for c in choices[:-1])
        # multipliers 0.25 ... 1.0 in steps of 1/8
        assert choices[0] >= min(8, layer.max_channels)
        if space.head_dim is not None and layer.name.endswith(".attn.qkv"):
            assert choices[0] == space.head_dim  # whole heads: one head is the smallest attention
            continue
        assert choices[0] <= max(8, math.ceil(layer.max_channels * DEFAULT_MULTIPLIERS[0] / 8) * 8)
        assert len(choices) <= len(DEFAULT_MULTIPLIERS)


@pytest.mark.parametrize("name", ALL_SPACES)
def test_tie_groups_share_max_channels_and_choices(name: str) -> None:
    space = get_space(name)
    seen: set[str] = set()
    for group in space.ties:
        assert not seen & set(group), "a layer belongs to two tie groups"
        seen |= set(group)
        assert len({space.layer(layer).max_channels for layer in group}) == 1, group
        assert len({space.layer(layer).width_choices for layer in group}) == 1, group


@pytest.mark.parametrize("name", ALL_SPACES)
def test_residual_additions_are_tied(name: str) -> None:
    """A block with a residual adds its input to its output, so both widths must be one decision."""
    space = get_space(name)
    group_of = {layer: frozenset(group) for group in _decision_groups(space) for layer in group}
    for block in space.blocks:
        if block.has_residual and block.shortcut_layer is None:
            assert group_of[block.in_layer] == group_of[block.out_layer], block.name
        if block.shortcut_layer is not None:
            assert group_of[block.shortcut_layer] == group_of[block.out_layer], block.name


@pytest.mark.parametrize("name", ALL_SPACES)
def test_num_subnets_is_product_of_decision_choice_counts(name: str) -> None:
    space = get_space(name)
    groups = _decision_groups(space)
    assert sorted(map(sorted, groups)) == sorted(sorted(layers) for layers in space.decisions.values())
    expected = math.prod(len(space.layer(next(iter(group))).width_choices) for group in groups)
    assert space.num_subnets == expected


def test_tiny_space_size() -> None:
    # decisions: stem+layer1 residual (4 choices), layer1.0.conv1 (4), layer2.0.conv1 (7), layer2 residual (7)
    assert get_space("tiny").num_subnets == 4 * 4 * 7 * 7


@pytest.mark.parametrize("name", ALL_SPACES)
def test_sample_is_valid_and_reproducible(name: str) -> None:
    space = get_space(name)
    configs = [space.sample(np.random.default_rng(seed), gates=True) for seed in range(20)]
    for cfg in configs:
        space.validate(cfg)
        low, high = space.gate_threshold_range
        assert set(cfg.gate_thresholds) == {block.name for block in space.gated_blocks}
        assert all(low <= t <= high for t in cfg.gate_thresholds.values())
    again = [space.sample(np.random.default_rng(seed), gates=True) for seed in range(20)]
    assert configs == again
    assert len(set(configs)) > 1  # the seed matters
    assert space.sample(np.random.default_rng(0)).gate_thresholds is None


@pytest.mark.parametrize("name", ["tiny", "resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("min_multiplier", [0.5, 0.75, 1.0])
def test_sample_respects_min_multiplier(name: str, min_multiplier: float) -> None:
    space = get_space(name)
    rng = np.random.default_rng(1)
    for _ in range(20):
        cfg = space.sample(rng, min_multiplier=min_multiplier)
        space.validate(cfg)
        for layer, channels in cfg.channels.items():
            assert channels >= space.layer(layer).max_channels * min_multiplier - 1e-9, (layer, channels)
    if min_multiplier == 1.0:
        assert space.sample(rng, min_multiplier=1.0) == space.max_config()


@pytest.mark.parametrize("name", ALL_SPACES)
def test_max_min_and_uniform_configs(name: str) -> None:
    space = get_space(name)
    assert space.uniform_config(1.0) == space.max_config()
    assert dict(space.max_config().channels) == {layer.name: layer.max_channels for layer in space.layers}
    assert dict(space.min_config().channels) == {layer.name: layer.min_channels for layer in space.layers}
    previous = space.min_config()
    for multiplier in DEFAULT_MULTIPLIERS:
        cfg = space.uniform_config(multiplier)
        assert all(cfg.channels[layer] >= previous.channels[layer] for layer in space.layer_names)
        previous = cfg
    gated = space.max_config(gate_threshold=0.5)
    assert gated.gate_thresholds == {block.name: 0.5 for block in space.gated_blocks}
    assert space.max_config().resolution == space.default_resolution


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2"])
def test_narrow_makes_the_config_its_maximum(name: str, rng: np.random.Generator) -> None:
    space = get_space(name)
    cfg = space.sample(rng)
    narrow = space.narrow(cfg.channels)
    assert dict(narrow.max_config().channels) == dict(cfg.channels)
    assert narrow.num_subnets == 1
    assert narrow.blocks == space.blocks and narrow.ties == space.ties


def test_cifar_and_imagenet_stems() -> None:
    for name in ("resnet18_cifar", "resnet50_cifar", "tiny"):
        space = get_space(name)
        assert (space.stem_kernel, space.stem_stride, space.stem_max_pool) == (3, 1, False)
        assert space.default_resolution == 32
    for name in ("resnet18", "resnet34", "resnet50"):
        space = get_space(name)
        assert (space.stem_kernel, space.stem_stride, space.stem_max_pool) == (7, 2, True)
        assert space.default_resolution == 224
    assert get_space("mobilenet_v2").stem_stride == 2
    assert get_space("mobilenet_v2_cifar").stem_stride == 1
    # CIFAR MobileNetV2: only three stride-2 blocks, so 32 px ends at 4x4
    assert [b.stride for b in get_space("mobilenet_v2_cifar").blocks].count(2) == 3


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("resnet18", torchvision.models.resnet18),
        ("resnet34", torchvision.models.resnet34),
        ("resnet50", torchvision.models.resnet50),
        ("mobilenet_v2", torchvision.models.mobilenet_v2),
    ],
)
def test_layer_names_are_torchvision_conv_paths(name: str, builder) -> None:
    space = get_space(name)
    modules = dict(builder(weights=None).named_modules())
    for layer in space.layers:
        conv = modules.get(layer.name)
        assert isinstance(conv, nn.Conv2d), layer.name
        assert conv.out_channels == layer.max_channels, layer.name
    # every non-depthwise torchvision conv is searchable (a depthwise conv follows its input width)
    convs = {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups == 1}
    assert set(space.layer_names) == convs


def test_from_decisions_rejects_unknown_decision() -> None:
    space = get_space("tiny")
    with pytest.raises(ConfigError, match="layer1.0.conv2"):
        # layer1.0.conv2 is tied to conv1: it is a layer, not a decision
        space.from_decisions({"layer1.0.conv2": 32})
