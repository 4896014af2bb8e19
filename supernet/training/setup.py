"""Everything a training run holds, built from its settings, saved and restored as one checkpoint."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from search_spaces import ConfigError, SearchSpace, SubnetConfig, UserError, first_line, get_space, subnet_space
from supernet.data.datasets import ImageData, load_image_data
from supernet.data.store import PipelineChoice, available_memory, choose_pipeline
from supernet.data.views import ViewOptions, ViewSpec, build_views, plan_views
from supernet.devices import data_workers, resolve_device
from supernet.evaluation import EvalData, prepare_eval_data
from supernet.io.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
)
from supernet.io.files import atomic_save, atomic_write_text
from supernet.io.provenance import provenance
from supernet.nn.flops import ShapeFlopCounter
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet, build_supernet
from supernet.nn.routing import RouterSet
from supernet.settings import flatten, settings_dict
from supernet.ssl import Collectives, SSLMethod, get_method
from supernet.training.distributed import (
    DistEnv,
    all_gather_rows,
    barrier,
    init_distributed,
    split_batch_norms,
    sync_batch_norms,
)
from supernet.training.group_reg import GroupDecay
from supernet.training.optim import build_optimizer, parameter_groups
from supernet.training.schema import DataPipeline, ModelConfig, TrainConfig

__all__ = ["FlopsReference", "GateFlops", "Run", "SetupError", "build_run", "fit_warmup", "host_rng_state",
           "load_subnet", "resolve_pipeline", "routing_identity", "save_checkpoint", "training_space"]

MAX_NATIVE_RESOLUTION = 224  # data.resolution=null trains at the images' own size up to this
# Settings a checkpoint must share with the run that resumes it.
RESUME_KEYS = ("model.space", "batch_size", "epochs", "seed", "gates.enabled", "data.resolution")


class SetupError(UserError):
    """A training setting that does not fit the data or the machine; the message names it."""


@dataclass(frozen=True)
class FlopsReference:
    dense: float  # the width, gates off
    gated_static: float  # the width, gates on, every channel kept (the gates' own cost included)


class GateFlops:
    """fvcore's FLOPs of each width the gated pass trains at (the budget loss needs both references).

    Counted from shapes on a private CPU copy of the encoder (:class:`supernet.nn.flops.ShapeFlopCounter`,
    equal to fvcore's counts), so a step neither traces the network nor touches the training device.
    """

    def __init__(self, encoder: SuperNet, resolution: int) -> None:
        self.counter = ShapeFlopCounter(encoder, resolution)

    def __call__(self, cfg: SubnetConfig) -> FlopsReference:
        return FlopsReference(dense=float(self.counter(cfg.with_gates(None))), gated_static=float(self.counter(cfg)))


@dataclass
class Run:
    """A training run's state; ``step`` is the number of optimizer steps taken."""

    cfg: TrainConfig
    out_dir: Path
    device: torch.device
    space: SearchSpace
    data: ImageData
    views: ViewSpec
    method: SSLMethod
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int  # of the schedules: epochs * steps_per_epoch
    stop_step: int  # where this invocation stops (max_steps caps it; schedules are unchanged)
    lr: float  # peak learning rate after the linear scaling rule
    warmup_steps: int  # of the learning rate: optim.warmup_epochs, fitted into the run (see fit_warmup)
    gate_flops: GateFlops | None = None  # set when gates train
    eval_data: EvalData | None = None  # kNN monitoring images, drawn once
    group_decay: GroupDecay | None = None  # US3L's group regularisation of the encoder, when on
    dist: DistEnv = field(default_factory=DistEnv)
    pipeline: PipelineChoice = field(default_factory=lambda: PipelineChoice("loader", "not chosen yet"))
    routers: RouterSet | None = None  # width routers, once their stage has run (routing.enabled)
    subnet: SubnetConfig | None = None  # model.subnet: the one sub-network this run trains on its own
    routers_step: int = -1  # the supernet step the routers were trained at
    step: int = 0
    # the first step whose loss was not finite (-1: none), kept on the device so no step waits to check
    nonfinite_since: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))
    embedding_dim: int = 1  # of the projections the collapse check reads

    @property
    def encoder(self) -> SuperNet:
        return self.method.encoder  # type: ignore[return-value]

    @property
    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA when ``amp`` is on (no loss scaling needed); a no-op on CPU."""
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)


def build_run(cfg: TrainConfig) -> Run:
    """The run ``cfg`` describes, resumed from ``out_dir`` when ``resume`` is set; writes its settings."""
    out_dir = Path(cfg.out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if checkpoint_path.exists() and not cfg.resume:
        raise CheckpointError(
            f"out_dir: {out_dir} already holds a checkpoint; pass resume=true to continue it or out_dir=<new folder>"
        )
    dist = init_distributed(cfg.device)
    if cfg.batch_size % dist.world_size:
        raise SetupError(f"batch_size: the global batch {cfg.batch_size} does not split over {dist.world_size} "
                         "processes; use a multiple of the process count")
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    space, subnet = training_space(cfg.model)
    if cfg.routing.enabled and not space.router_blocks:
        raise SetupError(f"routing.enabled: the {space.family} space {space.name} has no width routers (they sit in "
                         "front of a ResNet's or MobileNetV2's resolution changes); set routing.enabled=false")
    data = load_image_data(cfg.data.name, root=cfg.data.root, max_images=cfg.data.max_images,
                           holdout_size=cfg.data.holdout_size, download=cfg.data.download, seed=cfg.seed,
                           test_root=cfg.data.test_root, official_test=cfg.data.official_test)
    if cfg.data.resolution is None:  # recorded, so the checkpoint says what it was trained at
        cfg.data.resolution = min(data.image_size, MAX_NATIVE_RESOLUTION)
    cfg.data.num_workers = data_workers(cfg.data.num_workers)  # recorded as well: what this machine ran with
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise SetupError(f"batch_size: {cfg.batch_size} exceeds the {len(data.train)} training images; use a smaller batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps, note = fit_warmup(cfg.optim.warmup_epochs, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    if note and dist.is_main:
        print(note, file=sys.stderr)
    _, views = build_views(cfg.views.name, cfg.data.resolution, view_options(cfg))
    _check_patch_size(space, views)
    encoder = build_supernet(space, with_gates=cfg.gates.enabled, gate_options=gate_options(cfg))
    method = build_method(cfg, encoder, views).to(device)
    method.collectives = Collectives(rank=dist.rank, world_size=dist.world_size,
                                     gather_rows=lambda rows: all_gather_rows(rows, dist))
    if cfg.ssl.shuffle_bn:
        split_batch_norms(method, _splits_per_rank(cfg, dist))
    elif dist.enabled:
        sync_batch_norms(method)
    if device.type == "cuda" and cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    if cfg.compile:
        compile_static_networks(method, student_too=not cfg.sandwich.enabled)
    groups = parameter_groups(method, weight_decay=cfg.regularization.weight_decay, decay_encoder=not cfg.regularization.group)
    lr = cfg.optim.lr * cfg.batch_size / 256  # linear scaling rule (Goyal et al. 2017)
    run = Run(
        cfg=cfg, out_dir=out_dir, device=device, space=space, data=data, views=views, method=method,
        optimizer=build_optimizer(cfg.optim.name, groups, lr=lr, momentum=cfg.optim.momentum, lars_eta=cfg.optim.lars_eta),
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        stop_step=total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps), lr=lr,
        warmup_steps=warmup_steps,
        gate_flops=GateFlops(encoder, cfg.data.resolution) if cfg.gates.enabled else None,
        group_decay=GroupDecay(encoder, groups=cfg.regularization.groups, family=space.family)
        if cfg.regularization.group else None,
        dist=dist, subnet=subnet,
    )
    if cfg.knn.enabled:
        knn = cfg.knn
        run.eval_data = prepare_eval_data(data, resolution=cfg.data.resolution, calibration_images=knn.calibration_images,
                                          bank_size=knn.bank_size, val_size=knn.val_size, seed=knn.seed)
    saved = None
    if cfg.resume and checkpoint_path.exists():
        # On the host: the RNG states must reach torch as CPU ByteTensors (mapped to a GPU they would not),
        # and load_state_dict copies the weights onto the run's device anyway.
        payload = load_checkpoint(checkpoint_path, map_location="cpu")
        restore(run, payload)
        saved = flatten(payload["config"])
        print(f"resumed {checkpoint_path} at step {run.step}/{total_steps}")
    run.pipeline = resolve_pipeline(cfg, data, device, dist, saved=saved)
    cfg.data.pipeline = DataPipeline(run.pipeline.name)  # config.yaml records what ran, as for data.resolution
    if dist.is_main:
        print(f"data pipeline: {run.pipeline.reason}")
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(settings_dict(cfg)))
        atomic_write_text(out_dir / "run_info.json", json.dumps({**run_info(device), "world_size": dist.world_size,
                                                                 "data_pipeline": run.pipeline.reason}, indent=2))
    barrier(dist)
    return run


def fit_warmup(warmup_epochs: float, *, steps_per_epoch: int, total_steps: int) -> tuple[int, str | None]:
    """The learning-rate warm-up in steps, and a note when it had to change: a warm-up longer than the whole
    run (a recipe's 2 epochs in an ``epochs=1`` try-out) would leave no schedule to decay, so it is shortened
    to the run's first half, decided before anything trains."""
    steps = int(warmup_epochs * steps_per_epoch)
    if steps <= total_steps:
        return steps, None
    fitted = total_steps // 2
    epochs = total_steps // steps_per_epoch
    return fitted, (f"note: optim.warmup_epochs={warmup_epochs:g} ({steps} steps) is longer than this "
                    f"{epochs}-epoch run ({total_steps} steps); warming up over its first half ({fitted} steps) "
                    "instead (set optim.warmup_epochs to choose)")


def training_space(model: ModelConfig) -> tuple[SearchSpace, SubnetConfig | None]:
    """The space ``model.space`` names; with ``model.subnet``, the space of that one sub-network of it
    (:func:`search_spaces.subnet_space`) and the sub-network's config."""
    space = get_space(model.space)
    if model.subnet is None:
        return space, None
    cfg = load_subnet(model.subnet)
    if cfg.space != space.name:
        raise SetupError(f"model.subnet: {model.subnet} is a sub-network of {cfg.space!r}, this run's model.space is "
                         f"{space.name!r}; set model.space={cfg.space}")
    try:
        return subnet_space(cfg), cfg
    except ConfigError as error:
        raise SetupError(f"model.subnet: {model.subnet} does not fit {space.name} ({error})") from None


def load_subnet(path: str | Path) -> SubnetConfig:
    """A sub-network's config from a JSON file: a config itself, or a record holding one under ``"config"``
    (``nas.search``'s ``best.json``, ``nas.export``'s ``subnet.json``)."""
    path = Path(path)
    if not path.is_file():
        raise SetupError(f"model.subnet: {path} does not exist; expected a sub-network config (JSON), e.g. the "
                         "config of nas.search's best.json")
    try:
        return SubnetConfig.from_dict(SubnetConfig.unwrap(json.loads(path.read_text())))
    except (json.JSONDecodeError, ConfigError, UnicodeDecodeError) as error:
        raise SetupError(f"model.subnet: {path} is not a sub-network config ({first_line(error, limit=120)})") from None


def resolve_pipeline(cfg: TrainConfig, data: ImageData, device: torch.device, dist: DistEnv, *,
                     saved: dict[str, Any] | None = None) -> PipelineChoice:
    """``data.pipeline`` for this run: ``auto`` measures whether the image store fits (on every
    rank: the least free memory decides); a resumed ``auto`` run keeps the pipeline its checkpoint
    was trained with, so that it continues exactly (checkpoints from before the setting: loader)."""
    requested, previous, label = cfg.data.pipeline.value, None, None
    if saved is not None:
        previous = saved.get("data.pipeline") or "loader"
        if requested == "auto" and previous in ("device", "loader"):
            requested, label = previous, f"data.pipeline=auto keeps the checkpoint's {previous}"
    free = None
    if requested != "loader":
        free = available_memory(device)
        if dist.enabled:  # one decision for all ranks
            least = torch.tensor([float(free)], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(least, op=torch.distributed.ReduceOp.MIN)
            free = int(least.item())
    plan = plan_views(cfg.views.name, cfg.data.resolution, view_options(cfg))
    sides = [group.resolution for group in plan.groups for _ in range(group.count)]
    choice = choose_pipeline(requested, dataset=data.train, resolution=cfg.data.resolution,
                             store_side=cfg.data.store_side, device=device, free=free, label=label,
                             view_batch=cfg.batch_size // dist.world_size, view_sides=sides)
    if previous is not None and previous != choice.name:
        choice = PipelineChoice(choice.name, f"{choice.reason}; the checkpoint was trained with {previous}, so the "
                                "views from here on differ from an uninterrupted run's", choice.layout, choice.sizes)
    return choice


def compile_static_networks(method: SSLMethod, *, student_too: bool) -> None:
    """``torch.compile`` (in place, so parameters and checkpoints keep their names) the networks whose
    shapes never change: the full-width teacher, and the student's encoder and projector when only the
    full width trains. A sliced sub-network changes shape every pass, so compiling it would recompile
    on every new width."""
    for network in (method.teacher_encoder, method.teacher_projector):
        network.compile(dynamic=False)
    if student_too:
        method.encoder.compile(dynamic=False)
        method.projector.compile(dynamic=False)


def _check_patch_size(space: SearchSpace, views: ViewSpec) -> None:
    """A ViT cuts every view into whole patches: its global and local crop sizes must be multiples of the patch."""
    if space.family != "vit":
        return
    patch = space.stem_stride
    for key, side in (("data.resolution", views.resolution), ("views.local_resolution", views.local_resolution)):
        if side is not None and side % patch:
            raise SetupError(f"{key}: {side} px is not a multiple of {space.name}'s {patch}-px patch; "
                             f"use e.g. {max(patch, round(side / patch) * patch)}")


def _splits_per_rank(cfg: TrainConfig, dist: DistEnv) -> int:
    """Shuffle-BN's BatchNorm groups within one process: ``ssl.bn_splits`` over the global batch."""
    splits, world = cfg.ssl.bn_splits, dist.world_size
    if splits % world:
        raise SetupError(f"ssl.bn_splits: {splits} BatchNorm groups do not spread over {world} processes; "
                         "use a multiple of the process count")
    if cfg.batch_size % splits:
        raise SetupError(f"ssl.bn_splits: the batch of {cfg.batch_size} does not split into {splits} equal "
                         "BatchNorm groups; use a divisor of batch_size")
    return splits // world


def build_method(cfg: TrainConfig, encoder: SuperNet, views: ViewSpec) -> SSLMethod:
    """The SSL method ``ssl.name`` around ``encoder``, with the ``ssl.*`` settings it declares."""
    method = get_method(cfg.ssl.name)
    ssl = settings_dict(cfg.ssl)
    return method(
        encoder, proj_hidden_dim=cfg.ssl.proj_hidden_dim, proj_dim=cfg.ssl.proj_dim, pred_hidden_dim=cfg.ssl.pred_hidden_dim,
        proj_layers=cfg.ssl.proj_layers, num_global=views.num_global, global_global_weight=cfg.views.global_global_weight,
        global_local_weight=cfg.views.global_local_weight, shuffle_bn=cfg.ssl.shuffle_bn,
        **{key: ssl[key] for key in method.settings},
    )


def gate_options(cfg: TrainConfig) -> GateOptions:
    return GateOptions(init_bias=cfg.gates.init_bias, separate_norms=cfg.gates.separate_bn)


def view_options(cfg: TrainConfig) -> ViewOptions:
    """The view sampler's knobs (``views.*``) with what the data allows (``data.augment.*``)."""
    views, augment = cfg.views, cfg.data.augment
    return ViewOptions(
        num_local=views.num_local, local_resolution=views.local_resolution,
        global_scale=tuple(views.global_scale) if views.global_scale else None,  # type: ignore[arg-type]
        local_scale=tuple(views.local_scale), min_crop_scale=augment.min_crop_scale,  # type: ignore[arg-type]
        flip=augment.flip, photometric=augment.photometric, jitter=tuple(views.jitter),  # type: ignore[arg-type]
        blur=tuple(views.blur), local_blur=views.local_blur, solarize=tuple(views.solarize),  # type: ignore[arg-type]
    )


# -- checkpoints --------------------------------------------------------------------------------------
def save_checkpoint(run: Run) -> None:
    """Atomic checkpoint by rank 0 (the previous one kept); the other ranks wait for it."""
    if not run.dist.is_main:
        barrier(run.dist)
        return
    payload = {
        "format": CHECKPOINT_FORMAT,
        **{key: value for key, value in provenance().items() if key in ("version", "git_commit")},
        "space": run.space.name,
        "with_gates": bool(run.cfg.gates.enabled),
        "gate_options": asdict(run.encoder.gate_options),
        "config": settings_dict(run.cfg),
        "step": run.step,
        "total_steps": run.total_steps,
        "method": run.method.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    if run.subnet is not None:  # the space's name alone cannot rebuild it (load_supernet reads this)
        payload["subnet"] = run.subnet.to_dict()
    if run.routers is not None:
        payload["routers"] = {"settings": {**run.routers.settings(), **routing_identity(run.cfg)},
                              "step": run.routers_step,
                              "state": {name: t.detach().cpu() for name, t in run.routers.state_dict().items()}}
    atomic_save(payload, run.out_dir / CHECKPOINT_NAME, keep_previous=True)
    barrier(run.dist)


def restore(run: Run, payload: dict[str, Any]) -> None:
    """Continue ``run`` from a checkpoint trained with the same :data:`RESUME_KEYS`."""
    saved, current = flatten(payload["config"]), flatten(settings_dict(run.cfg))
    for key in RESUME_KEYS:
        if saved.get(key) != current[key]:
            raise CheckpointError(
                f"{key}: the checkpoint was trained with {saved.get(key)!r}, this run asks for {current[key]!r}; "
                "resume with the same settings or start a new out_dir"
            )
    trained, wanted = payload.get("subnet"), None if run.subnet is None else run.subnet.to_dict()
    if trained != wanted:
        raise CheckpointError(f"model.subnet: the checkpoint was trained as {_network_label(trained)}, this run asks for "
                              f"{_network_label(wanted)}; resume with the same settings or start a new out_dir")
    run.method.load_state_dict(payload["method"])
    run.optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(host_rng_state(payload["rng"]["torch"]))
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([host_rng_state(state) for state in payload["rng"]["cuda"]])
    run.step = int(payload["step"])
    routers = payload.get("routers")
    if routers is not None and all(routers["settings"].get(key) == value
                                   for key, value in routing_identity(run.cfg).items()):
        run.routers = RouterSet.from_record(run.space, routers).to(run.device)
        run.routers_step = int(routers["step"])


def _network_label(subnet: dict[str, Any] | None) -> str:
    return "the supernet" if subnet is None else f"the sub-network of widths {json.dumps(subnet['channels'])}"


def routing_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The routing settings trained routers answer to: others retrain them."""
    return {"levels": list(cfg.routing.levels), "hidden_channels": cfg.routing.hidden_channels,
            "epochs": cfg.routing.epochs, "lr": cfg.routing.lr}


def host_rng_state(state: torch.Tensor) -> torch.Tensor:
    """A saved generator state as ``torch.set_rng_state`` and ``torch.cuda.set_rng_state_all`` take it: a CPU
    ByteTensor, whatever device or dtype the checkpoint was loaded with (``map_location=<GPU>`` moves it there)."""
    return state.detach().to(device="cpu", dtype=torch.uint8).contiguous()


def run_info(device: torch.device) -> dict[str, Any]:
    return {**provenance(), "device": str(device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
