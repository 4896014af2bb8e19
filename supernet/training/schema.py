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
from supernet.data.store import PIPELINES
from supernet.data.views import VIEW_BUILDERS
from supernet.evaluation.settings import KnnSettings
from supernet.losses import LOSS_WEIGHTINGS
from supernet.nn.routing import levels_problem
from supernet.settings import Rules, at_least, choice, in_range, optional, positive
from supernet.ssl import METHODS
from supernet.ssl.vicreg import VARIANCE_OVER_VIEWS
from supernet.training.optim import OPTIMIZERS

ViewsName = choice("ViewsName", VIEW_BUILDERS)
DataPipeline = choice("DataPipeline", PIPELINES)
SSLName = choice("SSLName", METHODS)
OptimizerName = choice("OptimizerName", OPTIMIZERS)
LossWeighting = choice("LossWeighting", LOSS_WEIGHTINGS)
MomentumSchedule = choice("MomentumSchedule", ("constant", "cosine"))
RegressionLoss = choice("RegressionLoss", ("negative_cosine", "normalized_mse"))
OptimizerSteps = choice("OptimizerSteps", ("per_network", "per_batch"))
WidthSampling = choice("WidthSampling", ("per_layer", "uniform", "fixed"))
GateLink = choice("GateLink", ("dense", "teacher"))
VarianceOverViews = choice("VarianceOverViews", VARIANCE_OVER_VIEWS)


def known_space(name: Any) -> str | None:
    try:
        get_space(name)
    except KeyError:
        return f"a search space: {', '.join(list_spaces())} (or <space>@<width multiplier>)"
    return None


def scale_pair(value: Any) -> str | None:
    valid = len(value) == 2 and 0 < value[0] <= value[1] <= 1
    return None if valid else "[low, high] with 0 < low <= high <= 1"


def probabilities(count: int):  # noqa: ANN201 - a Rule
    def rule(value: Any) -> str | None:
        return None if len(value) == count and all(0 <= p <= 1 for p in value) else f"{count} probabilities in [0, 1]"

    return rule


def device_name(name: Any) -> str | None:
    valid = name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    return None if valid else "auto, cpu, cuda or cuda:N"


@dataclass
class ModelConfig:
    space: str = "tiny"
    # a SubnetConfig JSON file (or nas.search's best.json / nas.export's subnet.json): train that one
    # sub-network of ``space`` on its own, its stand-alone twin (with sandwich.enabled=false gates.enabled=false)
    subnet: Optional[str] = None

    RULES: ClassVar[Rules] = {"space": known_space}


@dataclass
class AugmentConfig:
    """What augmentations suit the data (the view sampler's knobs are in ``views``)."""

    flip: bool = True
    photometric: bool = True  # colour jitter, grayscale, solarisation; off for grayscale digits
    min_crop_scale: Optional[float] = None  # a floor on the global crop scale (digits: keep the digit)

    RULES: ClassVar[Rules] = {"min_crop_scale": optional(in_range(0, 1, low_open=True))}


@dataclass
class DataConfig:
    name: DataName = DataName.mnist_embedded  # type: ignore[valid-type]
    root: Optional[str] = None
    max_images: Optional[int] = None  # use at most this many training images; null = all
    holdout_size: int = 1000  # labeled split for monitoring; never reaches the SSL loss (0 with a test split)
    test_root: Optional[str] = None  # an ImageFolder tree of labeled test images: the kNN's validation set
    official_test: bool = False  # the data set's own test split (CIFAR, STL-10) as the validation set
    download: bool = False
    resolution: Optional[int] = None  # null: the images' native size, capped at 224
    # DataLoader workers: PIL views (loader), or decoding files into the store (device); null: one per core
    # (shared by the processes on a machine), at most 8
    num_workers: Optional[int] = None
    # How training views are made: device (images decoded once into a uint8 tensor on the training
    # device, views made there in batches), loader (PIL per image in DataLoader workers), or auto
    # (device when the store fits in half the free device memory or RAM).
    pipeline: DataPipeline = DataPipeline.auto  # type: ignore[valid-type]
    store_side: Optional[int] = None  # device pipeline, mixed-size images: stored S x S (null: resolution * 256/224)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    RULES: ClassVar[Rules] = {"max_images": optional(at_least(1)), "holdout_size": at_least(0),
                              "resolution": optional(at_least(8)), "num_workers": optional(at_least(0)),
                              "store_side": optional(at_least(8))}


@dataclass
class ViewsConfig:
    """The view sampler (:mod:`supernet.data.views`); defaults are two_crop's (US3L CIFAR / BYOL)."""

    name: ViewsName = ViewsName.two_crop  # type: ignore[valid-type]
    num_local: int = 0
    local_resolution: Optional[int] = None  # null: 128/224 of data.resolution (SSLight)
    global_scale: Optional[list[float]] = None  # null: the sampler's default
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.3])
    jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.1])  # brightness, contrast, saturation, hue
    blur: list[float] = field(default_factory=lambda: [0.5, 0.5])  # per global view; crops >= 64 px only
    local_blur: float = 0.5
    solarize: list[float] = field(default_factory=lambda: [0.0, 0.0])  # per global view
    global_global_weight: float = 1.0
    global_local_weight: float = 0.0

    RULES: ClassVar[Rules] = {"num_local": at_least(0), "local_resolution": optional(at_least(8)),
                              "global_scale": optional(scale_pair), "local_scale": scale_pair,
                              "jitter": lambda v: None if len(v) == 4 and min(v) >= 0 else "four non-negative strengths",
                              "blur": probabilities(2), "local_blur": in_range(0, 1), "solarize": probabilities(2),
                              "global_global_weight": at_least(0), "global_local_weight": at_least(0)}


@dataclass
class SSLConfig:
    name: SSLName = SSLName.byol  # type: ignore[valid-type]
    proj_hidden_dim: int = 2048
    proj_dim: int = 256
    proj_layers: int = 2  # 2: Linear-BN-ReLU-Linear (BYOL); 3: one more hidden layer (US3L's CIFAR projector)
    pred_hidden_dim: int = 2048
    base_momentum: float = 0.99  # EMA teacher momentum (US3L: 0.99); 0: the teacher is the student (SimCLR, SimSiam, VICReg, SwAV)
    momentum_schedule: MomentumSchedule = MomentumSchedule.constant  # type: ignore[valid-type]  # US3L; cosine: BYOL's ramp to 1
    byol_loss: RegressionLoss = RegressionLoss.negative_cosine  # type: ignore[valid-type]  # US3L; normalized_mse: BYOL's 2 - 2cos
    temperature: float = 0.2  # MoCo v2's InfoNCE; SimCLR's NT-Xent (0.5); SwAV's softmax (0.1); MoCo v3's (ResNet 1.0, ViT 0.2)
    queue_size: int = 4096  # MoCo v2
    # MoCo's Shuffle-BN: the teacher embeds a shuffled batch; BatchNorm statistics per rank and, within
    # a process, over bn_splits / world_size interleaved groups (bn_splits groups over the global batch)
    shuffle_bn: bool = False
    bn_splits: int = 8
    online_distillation: bool = False  # SlimCLR logit distillation for sub-networks (MoCo v2, MoCo v3)
    freeze_patch_embed: bool = True  # MoCo v3's stop-grad-conv1: a ViT's random patch projection stays fixed (CNNs: no effect)
    # DINO (Caron et al. 2021) and SwAV (Caron et al. 2020): K prototypes after the proj_dim embedding
    num_prototypes: int = 65536
    student_temperature: float = 0.1
    teacher_temperature: float = 0.07  # reached after the warm-up
    warmup_teacher_temperature: float = 0.04  # the first epoch's
    warmup_teacher_temperature_epochs: int = 30  # linear, one value per epoch (DINO's code)
    center_momentum: float = 0.9
    head_batch_norm: bool = False  # BN in the DINO head's hidden layers (DINO: off; SSLight's CNNs: on)
    freeze_prototypes_epochs: float = 1.0  # DINO's freeze_last_layer; SwAV's freeze_prototypes_niters, in epochs
    # SwAV: Sinkhorn-Knopp codes; a queue of earlier embeddings (0: none), filled from an epoch on
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    queue_length: int = 0  # SwAV's embeddings kept per global view, over all ranks (MoCo v2's keys: queue_size)
    epoch_queue_starts: int = 15
    # VICReg (Bardes et al. 2022): weights of the invariance, variance and covariance terms
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0
    variance_over_views: VarianceOverViews = VarianceOverViews.mean  # type: ignore[valid-type]  # VICReg's code; sum: solo-learn's

    RULES: ClassVar[Rules] = {"proj_hidden_dim": at_least(1), "proj_dim": at_least(1), "proj_layers": in_range(2, 3),
                              "pred_hidden_dim": at_least(1), "base_momentum": in_range(0, 1), "temperature": positive,
                              "queue_size": at_least(1), "bn_splits": at_least(1), "num_prototypes": at_least(1), "student_temperature": positive,
                              "teacher_temperature": positive, "warmup_teacher_temperature": positive,
                              "warmup_teacher_temperature_epochs": at_least(0), "center_momentum": in_range(0, 1),
                              "freeze_prototypes_epochs": at_least(0), "sinkhorn_iterations": at_least(1),
                              "sinkhorn_epsilon": positive, "queue_length": at_least(0), "epoch_queue_starts": at_least(0),
                              "invariance_weight": at_least(0), "variance_weight": at_least(0),
                              "covariance_weight": at_least(0)}


@dataclass
class SandwichConfig:
    enabled: bool = True
    num_subnets: int = 4  # max, smallest allowed, and N-2 random per-layer configs
    # US3L dynamic sampling: the smallest width multiplier of each stage, and where stages end
    stage_min_widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])
    stage_ends: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])
    loss_weights: LossWeighting = LossWeighting.equal  # type: ignore[valid-type]  # US3L; slimclr: full 1+sum(w)-w_max, subs 1
    optimizer_steps: OptimizerSteps = OptimizerSteps.per_network  # type: ignore[valid-type]  # US3L; per_batch: SlimCLR
    sampling: WidthSampling = WidthSampling.per_layer  # type: ignore[valid-type]  # what the search varies; uniform: US3L
    fixed_widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])  # sampling=fixed (SlimCLR)

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
    """Krishna et al.'s dynamic channel gates, trained at the widths and thresholds the search uses."""

    enabled: bool = True
    target: float = 0.5  # t_d: effective-FLOPs ratio the gated network is pushed toward
    budget_weight: float = 5.0  # lambda (Krishna et al.)
    bound_weight: float = 1.0  # gamma of the per-layer density bounds (Krishna et al.)
    bound_rate: float = 0.02  # bounds [p sqrt(t), 1 - p + p sqrt(t)], p = exp(-rate * epoch)
    threshold: float = 0.5  # the reference threshold, at which the budget is defined
    sample_thresholds: bool = True  # train at per-block thresholds drawn from the space's range as well
    sample_widths: bool = True  # gated pass at one of the step's sandwich widths, not only at full width
    link: GateLink = GateLink.dense  # type: ignore[valid-type]  # Krishna: regress the dense network's other view; teacher: the EMA teacher
    separate_bn: bool = True  # Krishna's --separate_bn: blocks keep their own BatchNorm for the gated branch
    init_bias: float = 0.0  # gate logit bias at init: 0 opens about half the channels (Krishna et al.)

    RULES: ClassVar[Rules] = {"target": in_range(0, 1, low_open=True), "budget_weight": at_least(0),
                              "bound_weight": at_least(0), "bound_rate": at_least(0),
                              "threshold": in_range(0, 1, low_open=True, high_open=True)}


@dataclass
class RoutingConfig:
    """Width routers (DS-Net's dynamic width, :mod:`supernet.nn.routing`), trained without labels after the
    supernet, on the frozen supernet (DS-Net's stage II; :mod:`supernet.training.routing`)."""

    enabled: bool = False
    levels: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])  # width multipliers a router picks among
    hidden_channels: int = 64  # of each router's MLP
    epochs: int = 1  # passes over the training images
    lr: float = 1e-3  # AdamW

    RULES: ClassVar[Rules] = {"levels": levels_problem, "hidden_channels": at_least(1), "epochs": at_least(1),
                              "lr": positive}


@dataclass
class OptimConfig:
    name: OptimizerName = OptimizerName.sgd  # type: ignore[valid-type]  # sgd, lars, or adamw (MoCo v3 ViTs)
    lr: float = 0.05  # per 256 images; scaled linearly with the global batch size
    momentum: float = 0.9  # SGD and LARS; AdamW keeps its betas (0.9, 0.999)
    warmup_epochs: float = 1.0
    final_lr: float = 0.0
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017); Krishna et al. use 0.02

    RULES: ClassVar[Rules] = {"lr": positive, "momentum": in_range(0, 1, high_open=True), "warmup_epochs": at_least(0),
                              "final_lr": at_least(0), "lars_eta": positive}


@dataclass
class MonitorConfig(KnnSettings):
    """kNN monitoring of the max, middle and min widths every ``every_epochs`` epochs and at the end (and of
    the untrained network at step 0)."""

    enabled: bool = True
    every_epochs: int = 1

    RULES: ClassVar[Rules] = {**KnnSettings.RULES, "every_epochs": at_least(1)}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    sandwich: SandwichConfig = field(default_factory=SandwichConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
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
    # torch.compile the networks whose shapes never change: the teacher, and the student when only the
    # full width trains (sandwich.enabled=false); sub-networks change shape every pass and stay eager
    compile: bool = False
    channels_last: bool = True  # on CUDA
    collapse_std: float = 0.05  # stop if per-dim std of embeddings < collapse_std / sqrt(dim)
    progress: bool = True

    RULES: ClassVar[Rules] = {"epochs": at_least(1), "batch_size": at_least(2), "checkpoint_every_steps": at_least(0),
                              "max_steps": optional(at_least(1)), "log_every_steps": at_least(1), "device": device_name,
                              "collapse_std": at_least(0)}
