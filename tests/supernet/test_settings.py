"""One settings path: YAML under a dataclass schema, key=value overrides, typed and validated objects."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from nas.settings import LatencySettings, SearchSettings, load_search_settings
from supernet.evaluation.settings import KnnSettings
from supernet.settings import (
    SettingsError,
    at_least,
    choice,
    flatten,
    in_range,
    optional,
    settings_dict,
    validate,
)
from supernet.train import load_train_settings
from supernet.training.schema import MonitorConfig, TrainConfig


def test_composed_settings_are_typed_objects_with_the_overrides() -> None:
    cfg = load_train_settings(["optim.name=lars", "epochs=3", "knn.k=7"])
    assert isinstance(cfg, TrainConfig) and isinstance(cfg.knn, MonitorConfig) and isinstance(cfg.knn, KnnSettings)
    assert cfg.optim.name == "lars" and isinstance(cfg.optim.name, enum.Enum)
    assert (cfg.epochs, cfg.knn.k) == (3, 7)
    search = load_search_settings(["latency.repeats=3"])
    assert isinstance(search, SearchSettings) and isinstance(search.latency, LatencySettings)
    assert search.latency.repeats == 3


def test_training_and_search_share_one_declaration_of_the_knn_settings() -> None:
    train_knn, oracle = load_train_settings([]).knn, load_search_settings([]).oracle
    shared = {f.name: getattr(oracle, f.name) for f in dataclasses.fields(KnnSettings)}
    # the oracle's probe fits on twice the monitor's bank (RESULTS §6.1: the bank is most of the seed-to-seed noise)
    assert (train_knn.bank_size, oracle.bank_size) == (10000, 20000)
    del shared["bank_size"]
    assert {name: getattr(train_knn, name) for name in shared} == shared
    assert {f.name for f in dataclasses.fields(MonitorConfig)} - set(shared) == {"enabled", "every_epochs", "bank_size"}


def test_rules_name_the_dotted_key_and_what_would_be_right() -> None:
    @dataclass
    class Inner:
        rate: float = 0.5
        RULES: ClassVar = {"rate": in_range(0, 1, low_open=True)}

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        count: int | None = None
        RULES: ClassVar = {"count": optional(at_least(1))}

    validate(Outer())  # defaults are valid
    validate(Outer(count=3))
    with pytest.raises(SettingsError, match=r"^inner\.rate: 0\.0 is not valid; expected a number in \(0, 1\]$"):
        validate(Outer(inner=Inner(rate=0.0)))
    with pytest.raises(SettingsError, match=r"^count: 0 is not valid; expected a number >= 1 or null$"):
        validate(Outer(count=0))


def test_a_choice_is_built_from_its_registry() -> None:
    Sampler = choice("Sampler", ["nsga2", "tpe"])
    assert [member.value for member in Sampler] == ["nsga2", "tpe"] and Sampler("tpe") == "tpe"
    with pytest.raises(ValueError):
        Sampler("cmaes")


def test_a_chosen_value_prints_as_the_user_typed_it(tmp_path) -> None:
    """Issue 21 item 13: errors said ``DataName.cifar10`` where the user typed ``cifar10``."""
    from supernet.data.datasets import DataError, load_image_data

    cfg = load_train_settings(["data=cifar10", f"data.root={tmp_path}"])
    assert (str(cfg.data.name), f"{cfg.data.name}", f"{cfg.data.name:>8}", cfg.data.name) == ("cifar10",) * 2 + (
        " cifar10", "cifar10")
    with pytest.raises(DataError) as refused:
        load_image_data(cfg.data.name, root=cfg.data.root, max_images=None, holdout_size=10, download=False, seed=0)
    assert "cifar10 files not found" in str(refused.value) and "DataName" not in str(refused.value)


def test_settings_dict_round_trips_through_json_types() -> None:
    cfg = load_train_settings(["ssl=moco"])
    tree = settings_dict(cfg)
    assert tree["ssl"]["name"] == "moco" and type(tree["ssl"]["name"]) is str
    flat = flatten(tree)
    assert flat["ssl.name"] == "moco" and flat["knn.k"] == cfg.knn.k and "ssl" not in flat


def test_malformed_overrides_are_refused_before_composing() -> None:
    with pytest.raises(SettingsError, match="override 'epochs': expected key=value"):
        load_train_settings(["epochs"])


@pytest.mark.parametrize(("override", "expected"), [
    ("ssl.sinkhorn_iterations=0", r"^ssl\.sinkhorn_iterations: 0 is not valid; expected a number >= 1$"),
    ("ssl.sinkhorn_epsilon=-0.05", r"^ssl\.sinkhorn_epsilon: -0\.05 is not valid; expected a positive number$"),
    ("ssl.queue_length=-3840", r"^ssl\.queue_length: -3840 is not valid; expected a number >= 0$"),
    ("ssl.epoch_queue_starts=-1", r"^ssl\.epoch_queue_starts: -1 is not valid; expected a number >= 0$"),
    ("ssl.temperature=0", r"^ssl\.temperature: 0\.0 is not valid; expected a positive number$"),
    ("ssl.freeze_patch_embed=sometimes", r"^ssl\.freeze_patch_embed: Value 'sometimes' is not a valid bool"),
    ("optim.name=adam", r"^optim\.name: Invalid value 'adam', expected one of \[sgd, lars, larc, adamw\]$"),
])
def test_swav_and_mocov3_settings_refuse_bad_values_in_one_line(override: str, expected: str) -> None:
    method = "ssl=mocov3" if "patch" in override else "ssl=swav"
    with pytest.raises(SettingsError, match=expected) as error:
        load_train_settings([method, override])
    assert "\n" not in str(error.value)
