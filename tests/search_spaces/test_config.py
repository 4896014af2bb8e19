"""``SubnetConfig``: validation errors that name the field, JSON round-trip, hashing and equality."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search_spaces import ConfigError, SubnetConfig, get_space

TINY = get_space("tiny")


def _tiny_channels(**overrides: int) -> dict[str, int]:
    channels = dict(TINY.max_config().channels)
    channels.update({name.replace("__", "."): value for name, value in overrides.items()})
    return channels


def _thresholds(value: float = 0.5) -> dict[str, float]:
    return {block.name: value for block in TINY.gated_blocks}


# -- membership of the space (SearchSpace.validate, through space.config) -------------------------------

@pytest.mark.parametrize(
    ("channels", "thresholds", "field"),
    [
        ({**_tiny_channels(), "layer3.0.conv1": 32}, None, "channels['layer3.0.conv1']: unknown layer"),
        ({k: v for k, v in _tiny_channels().items() if k != "layer2.0.conv1"}, None,
         "channels['layer2.0.conv1']: missing"),
        (_tiny_channels(layer1__0__conv1=20), None, "channels['layer1.0.conv1']: 20 is not a width choice"),
        (_tiny_channels(layer1__0__conv1=64), None, "channels['layer1.0.conv1']: 64 is not a width choice"),
        # conv1 and layer1.0.conv2 share the identity residual path
        (_tiny_channels(layer1__0__conv2=16), None, "channels['layer1.0.conv2']: tied widths differ"),
        (_tiny_channels(layer2__0__conv2=32), None, "tied widths differ"),
        (_tiny_channels(), {**_thresholds(), "layer1.0": 0.95}, "gate_thresholds['layer1.0']: 0.95 is out of range"),
        (_tiny_channels(), {**_thresholds(), "layer2.0": 0.0}, "gate_thresholds['layer2.0']: 0.0 is out of range"),
        (_tiny_channels(), {**_thresholds(), "layer9.0": 0.5}, "gate_thresholds['layer9.0']: not a gated block"),
        (_tiny_channels(), {"layer1.0": 0.5}, "gate_thresholds['layer2.0']: missing"),
    ],
)
def test_config_outside_the_space_names_the_field(
    channels: dict[str, int], thresholds: dict[str, float] | None, field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        TINY.config(channels, thresholds)
    assert field in str(info.value)
    # the unvalidated dataclass itself is fine: membership is the space's business
    SubnetConfig("tiny", channels, thresholds, 32)


def test_threshold_range_bounds_are_inclusive() -> None:
    low, high = TINY.gate_threshold_range
    TINY.config(_tiny_channels(), {"layer1.0": low, "layer2.0": high})


def test_config_of_another_space_is_rejected() -> None:
    cfg = get_space("resnet18_cifar").max_config()
    with pytest.raises(ConfigError, match="space: config is for 'resnet18_cifar', expected 'tiny'"):
        TINY.validate(cfg)


def test_uniform_multiplier_out_of_range() -> None:
    for multiplier in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="multiplier"):
            TINY.uniform_config(multiplier)


# -- types (SubnetConfig construction) ----------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"space": ""}, "space"),
        ({"space": 3}, "space"),
        ({"channels": [("conv1", 32)]}, "channels: expected a mapping"),
        ({"channels": "conv1=32"}, "channels: expected a mapping"),
        ({"channels": {"conv1": "32"}}, "channels['conv1']: expected a positive int"),
        ({"channels": {"conv1": True}}, "channels['conv1']: expected a positive int"),
        ({"channels": {"conv1": 32.0}}, "channels['conv1']: expected a positive int"),
        ({"channels": {"conv1": 0}}, "channels['conv1']: expected a positive int"),
        ({"channels": {"conv1": -8}}, "channels['conv1']: expected a positive int"),
        ({"channels": {1: 32}}, "channels: layer names must be strings"),
        ({"gate_thresholds": [0.5]}, "gate_thresholds: expected a mapping"),
        ({"gate_thresholds": {"layer1.0": "0.5"}}, "gate_thresholds['layer1.0']: expected a finite float"),
        ({"gate_thresholds": {"layer1.0": True}}, "gate_thresholds['layer1.0']: expected a finite float"),
        ({"gate_thresholds": {"layer1.0": math.nan}}, "gate_thresholds['layer1.0']: expected a finite float"),
        ({"gate_thresholds": {"layer1.0": math.inf}}, "gate_thresholds['layer1.0']: expected a finite float"),
        ({"resolution": 32.0}, "resolution"),
        ({"resolution": "32"}, "resolution"),
        ({"resolution": True}, "resolution"),
        ({"resolution": 0}, "resolution"),
    ],
)
def test_wrong_types_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"space": "tiny", "channels": {"conv1": 32}, "gate_thresholds": None, "resolution": 32}
    with pytest.raises(ConfigError) as info:
        SubnetConfig(**{**base, **kwargs})
    assert str(info.value).startswith(field)
    assert isinstance(info.value, ValueError)  # ConfigError is a ValueError for callers that catch those


# -- JSON ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gates", [False, True])
@pytest.mark.parametrize("name", ["tiny", "resnet50", "mobilenet_v2_cifar"])
def test_json_round_trip(name: str, gates: bool, tmp_path: Path) -> None:
    space = get_space(name)
    cfg = space.sample(np.random.default_rng(3), gates=gates)
    text = cfg.to_json(indent=2)
    assert json.loads(text)["channels"] == dict(cfg.channels)
    back = SubnetConfig.from_json(text)
    assert back == cfg and hash(back) == hash(cfg)
    space.validate(back)
    path = tmp_path / "subnet.json"
    path.write_text(cfg.to_json())
    assert SubnetConfig.load(path) == cfg
    if gates:
        # thresholds survive exactly (floats through JSON repr)
        assert dict(back.gate_thresholds) == dict(cfg.gate_thresholds)
    else:
        assert json.loads(text)["gate_thresholds"] is None and back.gate_thresholds is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"space": "tiny", "channels": {}, "gate_thresholds": null, "resolution": 32, "depth": 2}',
         "depth: unknown field"),
        ('{"space": "tiny", "channels": {}, "gate_thresholds": null}', "resolution: missing field"),
        ('{"channels": {}, "gate_thresholds": null, "resolution": 32}', "space: missing field"),
        ('[1, 2]', "config: expected a JSON object"),
        ('"tiny"', "config: expected a JSON object"),
        ('{"space": "tiny",', "config: not valid JSON"),
        ('{"space": "tiny", "channels": {"conv1": 32}, "gate_thresholds": null, "resolution": 32.5}', "resolution"),
        ('{"space": "tiny", "channels": {"conv1": "wide"}, "gate_thresholds": null, "resolution": 32}',
         "channels['conv1']"),
    ],
)
def test_bad_json_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SubnetConfig.from_json(text)
    assert str(info.value).startswith(field)


# -- equality, hashing, immutability ------------------------------------------------------------------

def test_a_record_holding_a_config_is_unwrapped_and_a_config_is_not() -> None:
    cfg = get_space("tiny").uniform_config(0.5).to_dict()
    assert SubnetConfig.unwrap({"trial": 3, "accuracy": 0.5, "config": cfg}) is cfg  # best.json, subnet.json
    assert SubnetConfig.unwrap(cfg) is cfg
    assert SubnetConfig.unwrap({"config": "not a config"}) == {"config": "not a config"}  # left to from_dict to refuse
    assert SubnetConfig.unwrap([cfg]) == [cfg]


def test_equality_and_hash_ignore_mapping_order() -> None:
    channels = _tiny_channels()
    reversed_channels = dict(reversed(list(channels.items())))
    a = SubnetConfig("tiny", channels, _thresholds(0.3), 32)
    b = SubnetConfig("tiny", reversed_channels, dict(reversed(list(_thresholds(0.3).items()))), 32)
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert len({a, b}) == 1 and {a: 1}[b] == 1


@pytest.mark.parametrize(
    "other",
    [
        SubnetConfig("tiny", _tiny_channels(layer1__0__conv1=16), _thresholds(0.3), 32),
        SubnetConfig("tiny", _tiny_channels(), _thresholds(0.31), 32),
        SubnetConfig("tiny", _tiny_channels(), None, 32),
        SubnetConfig("tiny", _tiny_channels(), _thresholds(0.3), 64),
        SubnetConfig("resnet18_cifar", _tiny_channels(), _thresholds(0.3), 32),
    ],
)
def test_configs_differing_in_any_field_are_unequal(other: SubnetConfig) -> None:
    cfg = SubnetConfig("tiny", _tiny_channels(), _thresholds(0.3), 32)
    assert cfg != other
    assert len({cfg, other}) == 2
    assert cfg != cfg.to_dict()  # a dict with the same content is not a config


def test_config_is_immutable_and_owns_its_data() -> None:
    channels, thresholds = _tiny_channels(), _thresholds(0.3)
    cfg = SubnetConfig("tiny", channels, thresholds, 32)
    key = cfg.key()
    channels["conv1"] = 8
    thresholds["layer1.0"] = 0.9
    assert cfg.key() == key
    with pytest.raises(TypeError):
        cfg.channels["conv1"] = 8  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg.resolution = 64  # type: ignore[misc]


def test_with_gates() -> None:
    cfg = TINY.max_config()
    gated = cfg.with_gates(_thresholds(0.4))
    assert gated.gated and not cfg.gated
    assert dict(gated.channels) == dict(cfg.channels) and gated.resolution == cfg.resolution
    assert gated.with_gates(None) == cfg
    TINY.validate(gated)
