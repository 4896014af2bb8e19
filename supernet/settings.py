"""One settings path for every command: YAML under a dataclass schema, ``key=value`` overrides.

A command's settings are ``configs/<name>.yaml`` composed by Hydra's compose API under a
structured schema (struct mode: an unknown key is an error), then ``key=value`` overrides, then
turned into the schema's dataclasses (``OmegaConf.to_object``) and checked against each
dataclass's ``RULES``. Library code receives those typed objects, never a ``DictConfig``.

Choice fields are :class:`enum.Enum` types built from the registries they choose from
(:func:`choice`), so a bad choice is refused when the settings are composed, with the valid names.
Range rules are small functions that return what a valid value would be, or ``None``::

    @dataclass
    class LatencySettings:
        repeats: int = 20
        RULES: ClassVar[Rules] = {"repeats": at_least(1)}

Every problem ends in :class:`SettingsError`, one line naming the key: ``latency.repeats: 0 is not
valid; expected an integer >= 1``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from search_spaces import UserError

__all__ = [
    "Choice",
    "Rule",
    "Rules",
    "SettingsError",
    "at_least",
    "choice",
    "compose_settings",
    "config_dir",
    "in_range",
    "optional",
    "positive",
    "settings_dict",
    "settings_from_saved",
    "validate",
]

T = TypeVar("T")
Rule = Callable[[Any], "str | None"]  # returns what a valid value would be, or None if the value is fine
Rules = Mapping[str, Rule]


class SettingsError(UserError):
    """A setting that is unknown, of the wrong type, a bad choice, or out of range."""


# -- where the YAML lives ---------------------------------------------------------------------------
def config_dir() -> Path:
    """The folder of the YAML settings: the package data ``supernet.configs``.

    That package is the repository's top-level ``configs/`` (mapped in ``pyproject.toml``), so a
    source checkout, an editable install and an installed wheel all read the same files. A checkout
    that was never installed falls back to ``configs/`` beside the source tree.
    """
    try:
        packaged = Path(str(resources.files("supernet.configs")))
    except ModuleNotFoundError:
        packaged = None
    if packaged is not None and (packaged / "train.yaml").is_file():
        return packaged
    source_tree = Path(__file__).resolve().parents[1] / "configs"
    if (source_tree / "train.yaml").is_file():
        return source_tree
    raise SettingsError(
        "the YAML settings (train.yaml, search.yaml, ...) were found neither as the package data supernet.configs "
        f"nor in {source_tree}; reinstall with pip install slimnas (or pip install -e . from a checkout)"
    )


# -- choices and ranges -----------------------------------------------------------------------------
class Choice(str, enum.Enum):
    """A setting's chosen value: compares, prints and formats as the value the user typed (``cifar10``, not
    ``DataName.cifar10``, which ``str()`` and f-strings give for a plain ``str`` enum since Python 3.11)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def choice(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A ``str`` enum whose members are ``values`` (member name = value), for a schema's choice field.

    Build it from the registry the field chooses from, so the two cannot disagree. Members print as
    their values, so messages read as the user wrote the setting.

    >>> Optimizer = choice("Optimizer", ["sgd", "lars"])
    >>> Optimizer("lars") == "lars", f"{Optimizer.lars}"
    (True, 'lars')
    """
    return Choice(name, {value: value for value in values})  # type: ignore[return-value]


def positive(value: Any) -> str | None:
    return None if value > 0 else "a positive number"


def at_least(low: float) -> Rule:
    def rule(value: Any) -> str | None:
        return None if value >= low else f"a number >= {low:g}"

    return rule


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """``low <= value <= high``, with either end open."""

    def rule(value: Any) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    return rule


def optional(rule: Rule) -> Rule:
    """``rule``, or null."""

    def checked(value: Any) -> str | None:
        if value is None:
            return None
        expected = rule(value)
        return None if expected is None else f"{expected} or null"

    return checked


def validate(settings: Any, prefix: str = "") -> None:
    """Apply every dataclass's ``RULES`` below ``settings``; raise :class:`SettingsError` at the first break."""
    if not dataclasses.is_dataclass(settings):
        return
    rules: Rules = getattr(type(settings), "RULES", {})
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        key = f"{prefix}{item.name}"
        if item.name in rules:
            expected = rules[item.name](value)
            if expected is not None:
                raise SettingsError(f"{key}: {_show(value)} is not valid; expected {expected}")
        validate(value, prefix=f"{key}.")


def _show(value: Any) -> str:
    return repr(value.value) if isinstance(value, enum.Enum) else repr(value)


# -- composing --------------------------------------------------------------------------------------
def compose_settings(config_name: str, overrides: list[str], schema: type[T]) -> T:
    """``configs/<config_name>.yaml`` under ``schema``, with ``key=value`` overrides, validated.

    The YAML's defaults list must name ``<config_name>_schema`` first (it is registered here).
    """
    malformed = [item for item in overrides if "=" not in item]
    if malformed:
        raise SettingsError(f"override {malformed[0]!r}: expected key=value, e.g. seed=1")
    _register(f"{config_name}_schema", schema)
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            composed = compose(config_name, overrides=overrides)
        settings = OmegaConf.to_object(composed)
    except (HydraException, OmegaConfBaseException) as error:
        raise SettingsError(_describe(error)) from None
    validate(settings)
    return settings  # type: ignore[return-value]


def settings_from_saved(saved: Mapping[str, Any], overrides: list[str], schema: type[T]) -> T:
    """The typed, validated settings a run saved (``config.yaml``, a checkpoint's ``config``) with ``key=value``
    overrides on top: for commands that continue a run rather than start one."""
    malformed = [item for item in overrides if "=" not in item]
    if malformed:
        raise SettingsError(f"override {malformed[0]!r}: expected key=value, e.g. routing.epochs=2")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), saved, OmegaConf.from_dotlist(overrides))
        settings = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise SettingsError(_describe(error)) from None
    validate(settings)
    return settings  # type: ignore[return-value]


@lru_cache(maxsize=None)
def _register(name: str, schema: type) -> None:
    ConfigStore.instance().store(name=name, node=schema)


def _describe(error: BaseException) -> str:
    """One line from Hydra's and OmegaConf's multi-line, chained messages, led by the key at fault.

    OmegaConf's own error names the key (``full_key``) and says what is wrong with the value;
    Hydra wraps it in "Error merging override ...". Prefer the former; else join the chain.
    """
    parts: list[str] = []
    link: BaseException | None = error
    while link is not None and len(parts) < 3:
        if isinstance(link, MissingConfigException) and link.options and link.missing_cfg_file:
            group, _, option = link.missing_cfg_file.rpartition("/")
            return f"{group}={option}: no such option; expected one of: {', '.join(link.options)}"
        text = str(link).strip()
        first = text.splitlines()[0].rstrip(".") if text else ""
        key = getattr(link, "full_key", None)
        if key and first and "$VALUE" not in first:  # skip OmegaConf's unfilled templates
            return f"{key}: {first}"
        if first and first not in parts and "$VALUE" not in first:
            parts.append(first)
        link = link.__cause__ or link.__context__
    return ": ".join(parts) or type(error).__name__


def settings_dict(settings: Any) -> dict[str, Any]:
    """A JSON-able dict of typed settings (enums as their values)."""
    return OmegaConf.to_container(OmegaConf.structured(settings), enum_to_str=True)  # type: ignore[return-value]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: dotted keys, as the user writes them in overrides."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
