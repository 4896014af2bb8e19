"""Hydra schema of ``python -m supernet.train`` (struct mode: unknown keys are errors).

The YAML under ``configs/`` fills these dataclasses; defaults here equal the published recipes
(US3L, SlimCLR, Krishna et al. gates, BYOL), scaled down only where the YAML says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ModelConfig:
    space: str = "tiny"


@dataclass
class DataConfig:
    name: str = "mnist_embedded"
    root: Optional[str] = None
    max_images: Optional[int] = None  # use at most this many training images; null = all
    holdout_size: int = 1000  # labeled split for monitoring; never reaches the SSL loss
    download: bool = False
    resolution: int = 32
    num_workers: int = 0


@dataclass
class ViewsConfig:
    name: str = "two_crop"
    num_local: int = 0
    local_resolution: Optional[int] = None
    global_global_weight: float = 1.0
    global_local_weight: float = 0.0


@dataclass
class SSLConfig:
    name: str = "byol"
    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    pred_hidden_dim: int = 2048
    base_momentum: float = 0.99  # EMA teacher, cosine-increased to 1 (BYOL; US3L uses 0.99)
    temperature: float = 0.2  # MoCo v2
    queue_size: int = 4096  # MoCo v2
    online_distillation: bool = False  # SlimCLR logit distillation for sub-networks (MoCo)


@dataclass
class SandwichConfig:
    enabled: bool = True
    num_subnets: int = 4  # max, smallest allowed, and N-2 random per-layer configs
    # US3L dynamic sampling: the smallest width multiplier of each stage, and where stages end
    stage_min_widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    stage_ends: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    reweight_by_size: bool = True  # SlimCLR loss re-weighting


@dataclass
class RegularizationConfig:
    group: bool = True  # US3L group regularization replaces weight decay on the encoder
    weight_decay: float = 5e-4
    groups: int = 8
    max_alpha: float = 0.05
    alpha_ramp_fraction: float = 0.5


@dataclass
class GatesConfig:
    enabled: bool = True
    target: float = 0.5  # effective-FLOPs ratio the gated network is pushed toward
    budget_weight: float = 5.0  # Krishna et al.
    bound_rate: float = 0.02  # density bounds annealed with exp(-rate * epoch)
    threshold: float = 0.5  # threshold stored in the gated training config (training samples hard masks)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | lars
    lr: float = 0.05  # per 256 images; scaled linearly with the global batch size
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    final_lr: float = 0.0


@dataclass
class KnnConfig:
    enabled: bool = True
    k: int = 20
    temperature: float = 0.07
    bank_size: int = 5000
    calibration_images: int = 2000
    batch_size: int = 256


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
    knn: KnnConfig = field(default_factory=KnnConfig)
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    resume: bool = False
    out_dir: str = "runs/train"
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_steps: Optional[int] = None  # stop early after this many steps (tests, smoke runs)
    log_every_steps: int = 10
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # on CUDA
    collapse_std: float = 0.05  # stop if per-dim std of embeddings < collapse_std / sqrt(dim)
    progress: bool = True


def register_schema() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
