"""Settings of ``nas.search``, ``nas.export`` and ``nas.evaluate``: ``configs/search.yaml`` under this schema.

Flags (``--budget``, ``--trials``, ...) say what to do; these settings say how candidates are
measured, and every command that scores a sub-network reads the same ones, so a config exported
or evaluated scores as it did in the search. ``key=value`` arguments override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from nas.latency.runtimes import DTYPES, RUNTIMES
from supernet.data.datasets import DataName
from supernet.evaluation.settings import (
    LinearEvalSettings,
    OracleSettings,
    SemiSupervisedSettings,
    SwitchableProbeSettings,
)
from supernet.settings import (
    Rules,
    at_least,
    choice,
    compose_settings,
    optional,
    positive,
)

__all__ = ["PROBE_PROTOCOLS", "DataOverrides", "LatencyAnchor", "LatencyDtype", "LatencyRuntime", "LatencySettings", "ProbeProtocol", "ProbeSettings", "SearchSettings",
           "StorageSettings", "load_search_settings"]


@dataclass
class DataOverrides:
    """Evaluation data; null keeps what the checkpoint was trained with."""

    name: Optional[DataName] = None  # type: ignore[valid-type]
    root: Optional[str] = None
    holdout_size: Optional[int] = None
    test_root: Optional[str] = None  # an ImageFolder tree of labeled test images to score on
    official_test: Optional[bool] = None  # score on the data set's own test split (CIFAR, STL-10)
    download: bool = False

    RULES: ClassVar[Rules] = {"holdout_size": optional(at_least(0))}


LatencyRuntime = choice("LatencyRuntime", ("auto", *RUNTIMES))
"""``latency.runtime``: what a candidate is timed as (:mod:`nas.latency.runtimes`); auto: graph on CUDA, eager on CPU."""
LatencyDtype = choice("LatencyDtype", ("auto", *DTYPES))
"""``latency.dtype``: its precision; auto: float16 on CUDA, float32 on CPU."""
LatencyAnchor = choice("LatencyAnchor", ("auto", "on", "off"))
"""``latency.anchor``: time every network relative to a reference timed in the same rounds; auto: on the CPU."""


@dataclass
class LatencySettings:
    """How latency is measured: the static network as deployed on ``runtime`` in ``dtype``, at ``batch_size`` (and
    batch 1); after at least ``warmup`` untimed forwards and ``warmup_seconds``, the median of at least ``repeats``
    timed ones, timed for at least ``timed_seconds``."""

    runtime: LatencyRuntime = LatencyRuntime.auto  # type: ignore[valid-type]
    dtype: LatencyDtype = LatencyDtype.auto  # type: ignore[valid-type]
    batch_size: Optional[int] = None  # the objective's batch; null: 256 on CUDA, 1 on CPU
    warmup: int = 5
    warmup_seconds: float = 0.2  # and at least this long: a machine coming out of idle needs time, not a count
    repeats: int = 20
    timed_seconds: float = 1.0  # and for at least this long: a fast network gets more repeats (RESULTS §18)
    threads: Optional[int] = 1  # CPU threads, fixed so figures compare; null = torch's default
    anchor: LatencyAnchor = LatencyAnchor.auto  # type: ignore[valid-type]  # relative to a reference network (nas.latency.measure)

    RULES: ClassVar[Rules] = {"batch_size": optional(at_least(1)), "warmup": at_least(0), "warmup_seconds": at_least(0),
                              "timed_seconds": at_least(0), "repeats": at_least(1), "threads": optional(at_least(1))}


PROBE_PROTOCOLS = ("fast", "linear", "switchable", "semi")
ProbeProtocol = choice("ProbeProtocol", PROBE_PROTOCOLS)
"""``probe.protocol``: what ``nas.evaluate`` measures (``--protocol`` overrides it)."""


@dataclass
class ProbeSettings:
    """``nas.evaluate``'s evaluation protocol and its settings.

    ``fast`` (default): kNN and a logistic-regression probe (full-batch L-BFGS) on frozen, cached,
    standardised features of the oracle's bank (``epochs``, ``lr``, ``weight_decay``). ``linear``:
    standard linear evaluation, SGD on augmented images (``linear.*``). ``switchable``: SlimCLR's one
    head per uniform width, from a checkpoint (``switchable.*``). ``semi``: SSLight's fine-tuning on
    1 % / 10 % of the labels (``semi.*``). The last three train on ``train_images`` labelled training
    images and score on the oracle's validation split; ``seed`` fixes every random draw of each.
    """

    protocol: ProbeProtocol = ProbeProtocol.fast  # type: ignore[valid-type]
    epochs: int = 100  # fast: full-batch L-BFGS iterations
    lr: float = 1.0  # fast: L-BFGS step scale
    weight_decay: float = 1e-4  # fast: L2 on the weights (not the bias)
    seed: int = 0  # head initialisation, batch order, augmentation, labelled subsets
    train_images: Optional[int] = None  # linear, switchable, semi: labelled training images; null = all of them
    linear: LinearEvalSettings = field(default_factory=LinearEvalSettings)
    switchable: SwitchableProbeSettings = field(default_factory=SwitchableProbeSettings)
    semi: SemiSupervisedSettings = field(default_factory=SemiSupervisedSettings)

    RULES: ClassVar[Rules] = {"epochs": at_least(1), "lr": positive, "weight_decay": at_least(0),
                              "train_images": optional(at_least(2))}


@dataclass
class StorageSettings:
    """Database storages only: a killed worker's trial is failed after ``grace_period`` seconds of silence."""

    heartbeat_interval: int = 10
    grace_period: int = 60

    RULES: ClassVar[Rules] = {"heartbeat_interval": at_least(1), "grace_period": at_least(1)}


@dataclass
class SearchSettings:
    data: DataOverrides = field(default_factory=DataOverrides)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    effective_flops_images: int = 256  # calibration images the gated networks' mean FLOPs are taken over
    population_size: int = 24  # NSGA-II generation size

    RULES: ClassVar[Rules] = {"effective_flops_images": at_least(1), "population_size": at_least(2)}


def load_search_settings(overrides: list[str]) -> SearchSettings:
    """configs/search.yaml with ``key=value`` overrides, typed and validated."""
    return compose_settings("search", overrides, SearchSettings)
