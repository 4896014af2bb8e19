"""ViT search spaces: one tied embedding decision, attention widths in whole heads, MLP widths, validation."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces import ConfigError, SubnetConfig, get_space
from search_spaces.vit import vit_space

VIT_SPACES = ("vit_test", "vit_tiny", "vit_tiny_cifar")


@pytest.mark.parametrize("name", VIT_SPACES)
def test_decisions_are_one_embedding_width_plus_heads_and_mlp_per_block(name: str) -> None:
    space = get_space(name)
    depth = len(space.blocks)
    per_block = (f"blocks.{i}.{layer}" for i in range(depth) for layer in ("attn.proj", "mlp.fc2"))
    embedding = ("patch_embed.proj", *per_block)
    expected = {"patch_embed.proj": tuple(sorted(embedding, key=space.layer_names.index))}
    for i in range(depth):
        expected[f"blocks.{i}.attn.qkv"] = (f"blocks.{i}.attn.qkv",)
        expected[f"blocks.{i}.mlp.fc1"] = (f"blocks.{i}.mlp.fc1",)
    assert space.decisions == expected
    assert space.ties == (tuple(embedding),)
    assert space.family == "vit" and {block.kind for block in space.blocks} == {"transformer"}
    for block in space.blocks:
        assert block.gated_layer == f"{block.name}.mlp.fc1"  # gates drop MLP hidden channels
        assert block.out_layer == f"{block.name}.mlp.fc2" and block.has_residual


def test_vit_tiny_is_deit_tiny() -> None:
    for name, patch, resolution in (("vit_tiny", 16, 224), ("vit_tiny_cifar", 4, 32)):
        space = get_space(name)
        assert (space.stem_kernel, space.stem_stride, space.default_resolution) == (patch, patch, resolution)
        assert len(space.blocks) == 12 and space.head_dim == 64
        assert space.layer("patch_embed.proj").max_channels == 192
        assert space.layer("blocks.11.attn.qkv").max_channels == 3 * 64
        assert space.layer("blocks.11.mlp.fc1").max_channels == 4 * 192
        assert space.layer("patch_embed.proj").width_choices == (48, 72, 96, 120, 144, 168, 192)
        assert space.layer("blocks.0.mlp.fc1").width_choices == (192, 288, 384, 480, 576, 672, 768)
    # 7 embedding widths x (3 head counts x 7 MLP widths) per block
    assert get_space("vit_tiny").num_subnets == 7 * 21**12


@pytest.mark.parametrize(("name", "choices"), [("vit_tiny", (64, 128, 192)), ("vit_test", (16, 32))])
def test_attention_widths_are_whole_heads(name: str, choices: tuple[int, ...]) -> None:
    space = get_space(name)
    for block in space.blocks:
        layer = space.layer(f"{block.name}.attn.qkv")
        assert layer.width_choices == choices
        assert all(width % space.head_dim == 0 for width in layer.width_choices)


def test_validation_names_the_offending_layer() -> None:
    space = get_space("vit_test")
    channels = dict(space.max_config().channels)
    with pytest.raises(ConfigError, match=r"channels\['blocks.1.attn.qkv'\]: 24 is not a width choice"):
        space.validate(SubnetConfig("vit_test", {**channels, "blocks.1.attn.qkv": 24}, None, 32))
    with pytest.raises(ConfigError, match="tied widths differ"):
        space.validate(SubnetConfig("vit_test", {**channels, "blocks.0.attn.proj": 16}, None, 32))
    with pytest.raises(ConfigError, match=r"gate_thresholds\['blocks.0'\]"):
        space.validate(SubnetConfig("vit_test", channels, {"blocks.0": 1.5, "blocks.1": 0.5}, 32))


def test_configs_round_trip_and_narrow_keeps_the_head_width(rng: np.random.Generator) -> None:
    space = get_space("vit_tiny")
    cfg = space.sample(rng, gates=True)
    assert SubnetConfig.from_json(cfg.to_json()) == cfg
    narrow = space.narrow(cfg.channels)
    assert narrow.head_dim == 64 and narrow.family == "vit" and narrow.num_subnets == 1
    assert dict(narrow.max_config().channels) == dict(cfg.channels)
    half = get_space("vit_tiny@0.5")
    assert half.layer("patch_embed.proj").max_channels == 96
    assert half.layer("blocks.0.attn.qkv").max_channels in (64, 128)


def test_resolution_must_be_a_multiple_of_the_patch() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        vit_space("bad", embed_dim=32, depth=1, num_heads=2, head_dim=16, patch_size=8, default_resolution=36)
