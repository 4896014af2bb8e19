"""``SubnetConfig``: one sub-network of a search space, as frozen JSON-able data."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from search_spaces.errors import UserError


class ConfigError(UserError):
    """A sub-network config that does not fit its search space; the message names the field."""


_FIELDS = ("space", "channels", "gate_thresholds", "resolution")
_OPTIONAL_FIELDS = ("route_thresholds",)  # written only when set, so static and gated configs read as before


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-network: channels of every searchable layer, gate thresholds, input resolution.

    ``gate_thresholds`` maps each gated block to the probability a channel's gate must reach to be
    kept at inference, or is ``None`` (gates off: the static sub-network). ``route_thresholds`` maps
    each router block (:attr:`search_spaces.SearchSpace.router_blocks`) to the probability its width
    router must give a narrower slice before an input takes it, or is ``None`` (no routing); a routed
    config's ``channels`` are the widest route, every route a narrower slice of them (DS-Net's dynamic
    width, :mod:`supernet.nn.routing`). A router block left out of ``route_thresholds`` runs no router: its
    group keeps the level the router before it chose (the first router block is never left out; with only
    it, one decision per input sets the whole network's width, as in DS-Net). Construction checks types;
    :meth:`search_spaces.SearchSpace.validate` checks membership of the space.

    >>> cfg = SubnetConfig("tiny", {"conv1": 16}, None, 32)
    >>> SubnetConfig.from_json(cfg.to_json()) == cfg
    True
    """

    space: str
    channels: Mapping[str, int]
    gate_thresholds: Mapping[str, float] | None
    resolution: int
    route_thresholds: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.space, str) or not self.space:
            raise ConfigError(f"space: expected a non-empty string, got {self.space!r}")
        if not isinstance(self.channels, Mapping):
            raise ConfigError(f"channels: expected a mapping of layer name to int, got {type(self.channels).__name__}")
        for name, channels in self.channels.items():
            if not isinstance(name, str):
                raise ConfigError(f"channels: layer names must be strings, got {name!r}")
            if not _is_int(channels) or channels <= 0:
                raise ConfigError(f"channels[{name!r}]: expected a positive int, got {channels!r}")
        for key in ("gate_thresholds", "route_thresholds"):
            _check_thresholds(key, getattr(self, key))
        if self.gate_thresholds is not None and self.route_thresholds is not None:
            raise ConfigError("route_thresholds: a routed config runs whole slices, not gated channels; "
                              "set gate_thresholds or route_thresholds to null")
        if not _is_int(self.resolution) or self.resolution <= 0:
            raise ConfigError(f"resolution: expected a positive int, got {self.resolution!r}")
        object.__setattr__(self, "channels", MappingProxyType({k: int(v) for k, v in self.channels.items()}))
        for key in ("gate_thresholds", "route_thresholds"):
            thresholds = getattr(self, key)
            if thresholds is not None:
                object.__setattr__(self, key, MappingProxyType({k: float(v) for k, v in thresholds.items()}))

    @property
    def gated(self) -> bool:
        return self.gate_thresholds is not None

    @property
    def routed(self) -> bool:
        return self.route_thresholds is not None

    @property
    def kind(self) -> str:
        """``"static"``, ``"gated"`` (channel gates) or ``"routed"`` (width routing)."""
        return "gated" if self.gated else "routed" if self.routed else "static"

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "space": self.space,
            "channels": dict(self.channels),
            "gate_thresholds": None if self.gate_thresholds is None else dict(self.gate_thresholds),
            "resolution": self.resolution,
        }
        if self.route_thresholds is not None:
            record["route_thresholds"] = dict(self.route_thresholds)
        return record

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def key(self) -> str:
        """Canonical string, equal for equal configs: a cache key and the hash."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubnetConfig) and self.key() == other.key()

    def __reduce__(self) -> tuple:
        # mappingproxy fields do not pickle; rebuild from plain dicts (copy, deepcopy, pickle)
        d = self.to_dict()
        return (SubnetConfig, (d["space"], d["channels"], d["gate_thresholds"], d["resolution"], d.get("route_thresholds")))

    def with_gates(self, gate_thresholds: Mapping[str, float] | None) -> SubnetConfig:
        """The same widths with these gate thresholds (and no routing)."""
        return SubnetConfig(self.space, dict(self.channels), gate_thresholds, self.resolution)

    def with_routes(self, route_thresholds: Mapping[str, float] | None) -> SubnetConfig:
        """The same widths with these route thresholds (and no gates); ``None``: the static widest route."""
        return SubnetConfig(self.space, dict(self.channels), None, self.resolution, route_thresholds)

    def static(self) -> SubnetConfig:
        """The same widths with gates and routing off."""
        return SubnetConfig(self.space, dict(self.channels), None, self.resolution)

    @staticmethod
    def unwrap(data: Any) -> Any:
        """The config JSON inside a record that holds one under ``"config"`` (``nas.search``'s ``best.json``,
        ``nas.export``'s ``subnet.json``); anything else as it is."""
        if isinstance(data, Mapping) and "channels" not in data and isinstance(data.get("config"), Mapping):
            return data["config"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> SubnetConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a JSON object with keys {list(_FIELDS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS) - set(_OPTIONAL_FIELDS))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown field; expected {list(_FIELDS + _OPTIONAL_FIELDS)}")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise ConfigError(f"{missing[0]}: missing field; expected {list(_FIELDS)}")
        return cls(data["space"], data["channels"], data["gate_thresholds"], data["resolution"],
                   data.get("route_thresholds"))

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config: not valid JSON ({error})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> SubnetConfig:
        return cls.from_json(Path(path).read_text())


def _check_thresholds(key: str, thresholds: object) -> None:
    if thresholds is None:
        return
    if not isinstance(thresholds, Mapping):
        raise ConfigError(f"{key}: expected a mapping of block name to float or null, got {type(thresholds).__name__}")
    for name, threshold in thresholds.items():
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
            raise ConfigError(f"{key}[{name!r}]: expected a finite float, got {threshold!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
