"""Settings of ``python -m supernet.train``: the schema ``configs/train.yaml`` is composed under.

Struct mode: an unknown key is an error; choices are enums built from their registries; ranges are
each dataclass's ``RULES`` (:mod:`supernet.settings`). Defaults are the published recipes (US3L,
SlimCLR, Krishna et al. gates, BYOL); the YAML scales them down only where it says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from search_spaces import get_space, list_spaces
from supernet.data.datasets import DataName
from supernet.data.views import VIEW_BUILDERS
from supernet.evaluation.settings import KnnSettings
from supernet.settings import Rules, at_least, choice, in_range, optional, positive
from supernet.ssl import METHODS
from supernet.training.optim import OPTIMIZERS

ViewsName = choice("ViewsName", VIEW_BUILDERS)
SSLName = choice("SSLName", METHODS)
OptimizerName = choice("OptimizerName", OPTIMIZERS)


def known_space(name: Any) -> str | None:
    try:
        get_space(name)
    except KeyError:
        return f"a search space: {', '.join(list_spaces())} (or <space>@<width multiplier>)"
    return None


def device_name(name: Any) -> str | None:
    valid = name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    return None if valid else "auto, cpu, cuda or cuda:N"


@dataclass
class ModelConfig:
    space: str = "tiny"

    RULES: ClassVar[Rules] = {"space": known_space}


@dataclass
class DataConfig:
    name: DataName = DataName.mnist_embedded  # type: ignore[valid-type]
    root: Optional[str] = None
    max_images: Optional[int] = None  # use at most this many training images; null = all
    holdout_size: int = 1000  # labeled split for monitoring; never reaches the SSL loss
    download: bool = False
    resolution: int = 32
    num_workers: int = 0

    RULES: ClassVar[Rules] = {"max_images": optional(at_least(1)), "holdout_size": at_least(1),
                              "resolution": at_least(8), "num_workers": at_least(0)}


@dataclass
class ViewsConfig:
    name: ViewsName = ViewsName.two_crop  # type: ignore[valid-type]
    num_local: int = 0
    local_resolution: Optional[int] = None
    global_global_weight: float = 1.0
    global_local_weight: float = 0.0

    RULES: ClassVar[Rules] = {"num_local": at_least(0), "local_resolution": optional(at_least(8)),
                              "global_global_weight": at_least(0), "global_local_weight": at_least(0)}


@dataclass
class SSLConfig:
    name: SSLName = SSLName.byol  # type: ignore[valid-type]
    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    pred_hidden_dim: int = 2048
    base_momentum: float = 0.99  # EMA teacher, cosine-increased to 1 (BYOL; US3L uses 0.99)
    temperature: float = 0.2  # MoCo v2
    queue_size: int = 4096  # MoCo v2
    online_distillation: bool = False  # SlimCLR logit distillation for sub-networks (MoCo)

    RULES: ClassVar[Rules] = {"proj_hidden_dim": at_least(1), "proj_dim": at_least(1), "pred_hidden_dim": at_least(1),
                              "base_momentum": in_range(0, 1), "temperature": positive, "queue_size": at_least(1)}


@dataclass
class SandwichConfig:
    enabled: bool = True
    num_subnets: int = 4  # max, smallest allowed, and N-2 random per-layer configs
    # US3L dynamic sampling: the smallest width multiplier of each stage, and where stages end
    stage_min_widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    stage_ends: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    reweight_by_size: bool = True  # SlimCLR loss re-weighting

    RULES: ClassVar[Rules] = {"num_subnets": at_least(1)}


@dataclass
class RegularizationConfig:
    group: bool = True  # US3L group regularization replaces weight decay on the encoder
    weight_decay: float = 5e-4
    groups: int = 8
    max_alpha: float = 0.05
    alpha_ramp_fraction: float = 0.5

    RULES: ClassVar[Rules] = {"weight_decay": at_least(0), "groups": at_least(1), "max_alpha": in_range(0, 1),
                              "alpha_ramp_fraction": in_range(0, 1)}


@dataclass
class GatesConfig:
    enabled: bool = True
    target: float = 0.5  # effective-FLOPs ratio the gated network is pushed toward
    budget_weight: float = 5.0  # Krishna et al.
    bound_rate: float = 0.02  # density bounds annealed with exp(-rate * epoch)
    threshold: float = 0.5  # threshold stored in the gated training config (training samples hard masks)

    RULES: ClassVar[Rules] = {"target": in_range(0, 1, low_open=True), "budget_weight": at_least(0),
                              "bound_rate": at_least(0), "threshold": in_range(0, 1, low_open=True, high_open=True)}


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.sgd  # type: ignore[valid-type]
    lr: float = 0.05  # per 256 images; scaled linearly with the global batch size
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    final_lr: float = 0.0

    RULES: ClassVar[Rules] = {"lr": positive, "momentum": in_range(0, 1, high_open=True), "warmup_epochs": at_least(0),
                              "final_lr": at_least(0)}


@dataclass
class MonitorConfig(KnnSettings):
    """kNN monitoring of the max, middle and min widths after every epoch (and of the untrained network)."""

    enabled: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    sandwich: SandwichConfig = field(default_factory=SandwichConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    knn: MonitorConfig = field(default_factory=MonitorConfig)
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    resume: bool = False
    out_dir: str = "runs/train"
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_steps: Optional[int] = None  # stop early after this many steps (tests, smoke runs)
    log_every_steps: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # on CUDA
    collapse_std: float = 0.05  # stop if per-dim std of embeddings < collapse_std / sqrt(dim)
    progress: bool = True

    RULES: ClassVar[Rules] = {"epochs": at_least(1), "batch_size": at_least(2), "checkpoint_every_steps": at_least(0),
                              "max_steps": optional(at_least(1)), "log_every_steps": at_least(1), "device": device_name,
                              "collapse_std": at_least(0)}
