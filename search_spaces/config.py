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


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-network: channels of every searchable layer, gate thresholds, input resolution.

    ``gate_thresholds`` maps each gated block to the probability a channel's gate must reach to be
    kept at inference, or is ``None`` (gates off: the static sub-network). Construction checks
    types; :meth:`search_spaces.SearchSpace.validate` checks membership of the space.

    >>> cfg = SubnetConfig("tiny", {"conv1": 16}, None, 32)
    >>> SubnetConfig.from_json(cfg.to_json()) == cfg
    True
    """

    space: str
    channels: Mapping[str, int]
    gate_thresholds: Mapping[str, float] | None
    resolution: int

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
        if self.gate_thresholds is not None:
            if not isinstance(self.gate_thresholds, Mapping):
                raise ConfigError(
                    f"gate_thresholds: expected a mapping of block name to float or null, "
                    f"got {type(self.gate_thresholds).__name__}"
                )
            for name, threshold in self.gate_thresholds.items():
                if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
                    raise ConfigError(f"gate_thresholds[{name!r}]: expected a finite float, got {threshold!r}")
        if not _is_int(self.resolution) or self.resolution <= 0:
            raise ConfigError(f"resolution: expected a positive int, got {self.resolution!r}")
        object.__setattr__(self, "channels", MappingProxyType({k: int(v) for k, v in self.channels.items()}))
        if self.gate_thresholds is not None:
            thresholds = {k: float(v) for k, v in self.gate_thresholds.items()}
            object.__setattr__(self, "gate_thresholds", MappingProxyType(thresholds))

    @property
    def gated(self) -> bool:
        return self.gate_thresholds is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "channels": dict(self.channels),
            "gate_thresholds": None if self.gate_thresholds is None else dict(self.gate_thresholds),
            "resolution": self.resolution,
        }

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
        return (SubnetConfig, (d["space"], d["channels"], d["gate_thresholds"], d["resolution"]))

    def with_gates(self, gate_thresholds: Mapping[str, float] | None) -> SubnetConfig:
        return SubnetConfig(self.space, dict(self.channels), gate_thresholds, self.resolution)

    @classmethod
    def from_dict(cls, data: Any) -> SubnetConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a JSON object with keys {list(_FIELDS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown field; expected {list(_FIELDS)}")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise ConfigError(f"{missing[0]}: missing field; expected {list(_FIELDS)}")
        return cls(data["space"], data["channels"], data["gate_thresholds"], data["resolution"])

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


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
