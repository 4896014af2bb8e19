"""One self-supervised training run of a slimmable, gated supernet: ``train(cfg)``.

Each step (US3L + SlimCLR + Krishna et al.):

1. the EMA teacher embeds the global views at full width, once (the temporally consistent target);
2. sandwich: the full-width student takes the method's SSL loss; the smallest network the current
   dynamic-sampling stage allows and N-2 random per-layer configs regress the teacher through the
   auxiliary head; losses weighted by size (SlimCLR); during the slow start only full width trains;
3. a gated pass at full width with Gumbel-sigmoid gates, plus the budget loss toward
   ``gates.target`` and annealed per-layer density bounds;
4. group regularization (US3L) on the encoder's gradients, optimizer step, EMA update.

Sub-network choices are a function of (seed, step) only, and view augmentations of (seed, epoch,
image index) only, so a resumed run continues exactly and every DDP rank samples the same networks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from search_spaces import SearchSpace, SubnetConfig, get_space
from supernet.bn import recalibrate_bn
from supernet.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, CheckpointError, atomic_save, load_checkpoint
from supernet.data import ImageData, load_image_data
from supernet.distributed import (
    DistEnv, all_gather_rows, average_gradients, barrier, gather_digests, init_distributed, shutdown, sync_batch_norms,
)
from supernet.evaluation import EvalData, knn_score, prepare_eval_data
from supernet.flops import count_flops, static_flops
from supernet.group_reg import apply_group_decay
from supernet.losses import density_bound_loss, density_bounds, flops_budget_loss, size_weights
from supernet.models import SuperNet, build_supernet
from supernet.optim import build_optimizer, parameter_groups
from supernet.provenance import provenance
from supernet.schedules import ema_momentum, group_alpha, min_width_multiplier, warmup_cosine_lr
from supernet.ssl import SSLMethod, get_method
from supernet.views import build_views


class SetupError(ValueError):
    """A training setting the user can fix; the message names it and what would be right."""


class TrainingStopped(RuntimeError):
    """Training cannot go on (non-finite loss, collapsed features); the last good checkpoint is kept."""


# -- pure pieces: testable without a run ----------------------------------------------------------
def plan_subnets(
    space: SearchSpace,
    *,
    seed: int,
    step: int,
    total_steps: int,
    num_subnets: int,
    stage_min_widths: list[float],
    stage_ends: list[float],
) -> list[tuple[str, SubnetConfig]]:
    """The sandwich of one step: max, smallest allowed, and ``num_subnets - 2`` random configs.

    A function of (seed, step) only. During a stage whose minimum width is 1.0 (slow start) only
    the full network trains.
    """
    floor = min_width_multiplier(step, total_steps, stages=stage_min_widths, stage_ends=stage_ends)
    plan = [("max", space.max_config())]
    if floor >= 1.0 or num_subnets < 2:
        return plan
    rng = np.random.default_rng([seed, step])
    plan.append(("min", space.min_config(min_multiplier=floor)))
    plan += [(f"random{i}", space.sample(rng, min_multiplier=floor)) for i in range(num_subnets - 2)]
    return plan


def relative_size(space: SearchSpace, cfg: SubnetConfig) -> float:
    """Mean over searchable layers of active / maximum channels (the size SlimCLR weighs by)."""
    return float(np.mean([cfg.channels[layer.name] / layer.max_channels for layer in space.layers]))


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ViewDataset(Dataset):
    """Multi-view samples whose augmentation is a function of (seed, epoch, index) only.

    Indices arrive encoded as ``epoch * len(base) + index`` (see :class:`EpochSampler`); the views
    are drawn under a forked RNG seeded from them, whatever process or worker runs them.
    """

    def __init__(self, base: Dataset, views: Any, *, seed: int) -> None:
        self.base, self.views, self.seed = base, views, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, encoded: int) -> list[torch.Tensor]:
        epoch, index = divmod(encoded, len(self))
        image, _label = self.base[index]  # labels never reach the SSL loss
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(self.seed, epoch, index))
            return self.views(image)


class EpochSampler(Sampler[int]):
    """Seeded permutation of epoch ``epoch``, from batch ``start_batch`` on, as encoded indices.

    ``batch_size`` is the global batch; rank ``rank`` of ``world_size`` takes every
    ``world_size``-th image of each global batch, so the union over ranks is the one-process batch.
    """

    def __init__(
        self, size: int, *, seed: int, epoch: int, batch_size: int, start_batch: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.epoch, self.batch_size = size, epoch, batch_size
        order_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        order = torch.randperm(size, generator=torch.Generator().manual_seed(order_seed))
        order = order[start_batch * batch_size : (size // batch_size) * batch_size]
        self.order = order.view(-1, batch_size)[:, rank::world_size].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.size
        return iter((self.order + offset).tolist())

    def __len__(self) -> int:
        return len(self.order)


# -- the run --------------------------------------------------------------------------------------
@dataclass
class FlopsReference:
    dense: float  # full width, gates off
    gated_static: float  # full width, gates on, every channel kept (the gates' own cost included)


@dataclass
class Run:
    cfg: DictConfig
    out_dir: Path
    device: torch.device
    space: SearchSpace
    data: ImageData
    method: SSLMethod
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    total_steps: int  # of the schedules: epochs * steps_per_epoch
    stop_step: int  # where this invocation stops (max_steps caps it; schedules are unchanged)
    flops: FlopsReference | None
    lr: float
    eval_data: EvalData | None = None  # kNN monitoring images, drawn once
    dist: DistEnv = DistEnv()
    step: int = 0

    @property
    def encoder(self) -> SuperNet:
        return self.method.encoder  # type: ignore[return-value]


def train(cfg: DictConfig) -> Path:
    """Train (or resume) the supernet described by ``cfg``; return the run directory."""
    run = _setup(cfg)
    log_path = run.out_dir / "metrics.jsonl"
    train_set = ViewDataset(run.data.train, build_views(cfg.views.name, cfg.data.resolution, **_view_kwargs(cfg))[0], seed=cfg.seed)
    while run.step < run.stop_step:
        epoch, start_batch = divmod(run.step, run.steps_per_epoch)
        sampler = EpochSampler(len(train_set), seed=cfg.seed, epoch=epoch, batch_size=cfg.batch_size, start_batch=start_batch,
                               rank=run.dist.rank, world_size=run.dist.world_size)
        # The loader's own generator keeps worker seeding off the global RNG (Gumbel noise), so
        # where a run resumes does not shift the noise stream.
        loader = DataLoader(
            train_set, batch_size=cfg.batch_size // run.dist.world_size, sampler=sampler, drop_last=True, num_workers=cfg.data.num_workers,
            pin_memory=run.device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed + epoch),
        )
        progress = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and run.dist.is_main), leave=False,
                        initial=start_batch, total=run.steps_per_epoch, file=sys.stdout)
        started, images_seen = time.perf_counter(), 0
        for views in progress:
            views = [v.to(run.device, non_blocking=True) for v in views]
            if run.device.type == "cuda" and cfg.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            terms = train_step(run, views)
            run.step += 1
            images_seen += views[0].shape[0] * run.dist.world_size
            throughput = images_seen / max(time.perf_counter() - started, 1e-9)
            progress.set_postfix(loss=f"{terms['loss']:.3f}", lr=f"{terms['lr']:.3g}", img_s=f"{throughput:.0f}")
            if run.dist.is_main and (run.step % cfg.log_every_steps == 0 or run.step == run.stop_step):
                _append_jsonl(log_path, {"kind": "step", "step": run.step, "epoch": epoch, "images_per_s": throughput, **terms})
            if cfg.checkpoint_every_steps and run.step % cfg.checkpoint_every_steps == 0:
                save_checkpoint(run)
            if run.step >= run.stop_step:
                break
        progress.close()
        if run.step % run.steps_per_epoch == 0 or run.step == run.stop_step:
            record: dict[str, Any] = {"kind": "epoch", "step": run.step, "epoch": epoch + 1}
            if cfg.knn.enabled and run.dist.is_main:
                with torch.random.fork_rng(devices=[]):  # monitoring must not shift the training RNG
                    record["knn"] = monitor_knn(run)
                print(f"epoch {epoch + 1}: kNN top-1 " + ", ".join(f"{k} {v:.2%}" for k, v in record["knn"].items()))
            if run.dist.is_main:
                _append_jsonl(log_path, record)
            save_checkpoint(run)
    digests = gather_digests(run.method, run.dist)
    if run.dist.enabled:
        if run.dist.is_main:
            (run.out_dir / "replicas.json").write_text(json.dumps({"step": run.step, "parameter_sha256": digests}, indent=2))
        if len(set(digests)) != 1:
            raise TrainingStopped(f"replicas diverged: parameter digests differ across ranks at step {run.step}")
    shutdown(run.dist)
    return run.out_dir


def train_step(run: Run, views: list[torch.Tensor], plan: list[tuple[str, SubnetConfig]] | None = None) -> dict[str, float]:
    """One optimizer step; returns the named loss terms (weighted as used), lr and schedule values.

    ``plan`` (label, config) overrides the sandwich of this step (benchmarks time single networks
    with it); the label "max" marks the network that takes the method's full-width loss.
    """
    cfg, method, encoder = run.cfg, run.method, run.encoder
    lr = warmup_cosine_lr(
        run.step, run.total_steps, base_lr=run.lr, warmup_steps=int(cfg.optim.warmup_epochs * run.steps_per_epoch),
        final_lr=cfg.optim.final_lr,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=cfg.amp and run.device.type == "cuda")
    method.train()
    with autocast:
        targets = method.teacher_targets(views)
    plan = plan or plan_subnets(
        run.space, seed=cfg.seed, step=run.step, total_steps=run.total_steps,
        num_subnets=cfg.sandwich.num_subnets if cfg.sandwich.enabled else 1,
        stage_min_widths=list(cfg.sandwich.stage_min_widths), stage_ends=list(cfg.sandwich.stage_ends),
    )
    sizes = [relative_size(run.space, subnet) for _, subnet in plan]
    weights = size_weights(sizes) if cfg.sandwich.reweight_by_size else [1.0] * len(plan)
    logged: dict[str, float] = {}
    total = 0.0
    cache: dict[str, Any] = {}
    for (label, subnet), weight in zip(plan, weights):
        encoder.set_active(subnet)
        with autocast:
            if label == "max":
                terms, cache = method.full_width_loss(views, targets)
            else:
                terms = method.subnet_loss(views, targets, cache)
            loss = weight * sum(terms.values())
        total += _backward(run, loss, {f"{label}/{name}": value for name, value in terms.items()}, logged)
    if run.flops is not None:
        total += _gated_pass(run, views, targets, cache, logged)
    encoder.set_max()
    _check_collapse(run, cache["projections"][0])
    average_gradients(method, run.dist)
    run.scaler.unscale_(run.optimizer)
    alpha = group_alpha(run.step, run.total_steps, max_alpha=cfg.regularization.max_alpha,
                        ramp_fraction=cfg.regularization.alpha_ramp_fraction)
    if cfg.regularization.group:
        apply_group_decay(encoder, cfg.regularization.weight_decay, alpha, cfg.regularization.groups)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    momentum = ema_momentum(run.step, run.total_steps, base=cfg.ssl.base_momentum)
    method.update_teacher(momentum)
    method.after_step(targets, gather=lambda rows: all_gather_rows(rows, run.dist))
    return {"loss": total, **logged, "lr": lr, "ema_momentum": momentum, "group_alpha": alpha,
            "min_width": min(sizes), "num_subnets": float(len(plan))}


def _gated_pass(run: Run, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any],
                logged: dict[str, float]) -> float:
    """Full width with Gumbel-sigmoid gates: the method's sub-network loss plus the budget terms.

    The budget uses the masks of the last global view's forward (an unbiased one-view estimate).
    """
    cfg, encoder = run.cfg, run.encoder
    encoder.set_active(run.space.max_config(gate_threshold=cfg.gates.threshold))
    autocast = torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=cfg.amp and run.device.type == "cuda")
    with autocast:
        terms = run.method.subnet_loss(views[: run.method.num_global], targets, cache)
        saved = encoder.gate_flops_saved()
        assert saved is not None and run.flops is not None
        gated_flops = run.flops.gated_static - saved.float()
        terms["budget"] = flops_budget_loss(gated_flops, run.flops.dense, cfg.gates.target, cfg.gates.budget_weight)
        densities = torch.stack([block.last_mask.float().mean() for block in encoder.gated_blocks()])  # type: ignore[union-attr]
        lower, upper = density_bounds(cfg.gates.target, run.step / run.steps_per_epoch, cfg.gates.bound_rate)
        terms["density"] = density_bound_loss(densities, lower, upper)
        loss = sum(terms.values())
    logged["gated/flops_ratio"] = float(gated_flops.detach().mean() / run.flops.dense)
    return _backward(run, loss, {f"gated/{name}": value for name, value in terms.items()}, logged)


def _backward(run: Run, loss: torch.Tensor, terms: dict[str, torch.Tensor], logged: dict[str, float]) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        bad = [name for name, term in terms.items() if not math.isfinite(float(term.detach()))]
        raise TrainingStopped(
            f"loss is not finite at step {run.step} ({', '.join(bad) or 'total'}); "
            "lower optim.lr or check the data. The last good checkpoint is kept."
        )
    run.scaler.scale(loss).backward()
    logged.update({name: float(term.detach()) for name, term in terms.items()})
    return value


def _check_collapse(run: Run, projections: torch.Tensor) -> None:
    std = run.method.embedding_std(projections)
    floor = run.cfg.collapse_std / math.sqrt(projections.shape[1])
    if std < floor:
        raise TrainingStopped(
            f"features collapsed at step {run.step}: per-dimension std of normalised embeddings {std:.2e} "
            f"< {floor:.2e}; lower optim.lr or raise ssl.base_momentum. The last good checkpoint is kept."
        )


@torch.no_grad()
def monitor_knn(run: Run) -> dict[str, float]:
    """kNN top-1 on the held-out split of the max, middle and min widths, BN recalibrated."""
    cfg, data = run.cfg, run.eval_data
    assert data is not None
    configs = {"max": run.space.max_config(), "mid": run.space.uniform_config(0.5), "min": run.space.min_config()}
    was_training = run.method.training
    results = {}
    for label, subnet in configs.items():
        network = run.encoder.extract(subnet).to(run.device)
        recalibrate_bn(network, data.calibration, len(data.calibration), batch_size=cfg.knn.batch_size, seed=cfg.seed,
                       device=run.device)
        results[label] = knn_score(network, data, k=cfg.knn.k, temperature=cfg.knn.temperature,
                                   batch_size=cfg.knn.batch_size, device=run.device)
    run.method.train(was_training)
    run.encoder.set_max()
    return results


# -- setup, checkpoints ---------------------------------------------------------------------------
def _setup(cfg: DictConfig) -> Run:
    out_dir = Path(cfg.out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if checkpoint_path.exists() and not cfg.resume:
        raise CheckpointError(
            f"out_dir: {out_dir} already holds a checkpoint; pass resume=true to continue it or out_dir=<new folder>"
        )
    dist_env = init_distributed(cfg.device)
    if cfg.batch_size % dist_env.world_size:
        raise SetupError(f"batch_size: the global batch {cfg.batch_size} does not split over {dist_env.world_size} "
                         "processes; use a multiple of the process count")
    device = _device(cfg.device)
    if device.type == "cuda" and dist_env.enabled:
        device = torch.device("cuda", dist_env.local_rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    try:
        space = get_space(cfg.model.space)
    except KeyError as error:
        raise SetupError(f"model.space: {error.args[0]}") from None
    data = load_image_data(cfg.data.name, root=cfg.data.root, max_images=cfg.data.max_images,
                           holdout_size=cfg.data.holdout_size, download=cfg.data.download, seed=cfg.seed)
    steps_per_epoch = len(data.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise SetupError(f"batch_size: {cfg.batch_size} exceeds the {len(data.train)} training images; use a smaller batch_size")
    total_steps = cfg.epochs * steps_per_epoch
    stop_step = total_steps if cfg.max_steps is None else min(total_steps, cfg.max_steps)
    _, view_spec = build_views(cfg.views.name, cfg.data.resolution, **_view_kwargs(cfg))
    encoder = build_supernet(space, with_gates=cfg.gates.enabled)
    method_kwargs: dict[str, Any] = dict(
        proj_hidden_dim=cfg.ssl.proj_hidden_dim, proj_dim=cfg.ssl.proj_dim, pred_hidden_dim=cfg.ssl.pred_hidden_dim,
        num_global=view_spec.num_global, global_global_weight=cfg.views.global_global_weight,
        global_local_weight=cfg.views.global_local_weight,
    )
    if cfg.ssl.name == "moco":
        method_kwargs.update(temperature=cfg.ssl.temperature, queue_size=cfg.ssl.queue_size,
                             online_distillation=cfg.ssl.online_distillation)
    method = get_method(cfg.ssl.name)(encoder, **method_kwargs).to(device)
    if dist_env.enabled:
        sync_batch_norms(method)
    if device.type == "cuda" and cfg.channels_last:
        method.to(memory_format=torch.channels_last)
    flops = None
    if cfg.gates.enabled:
        encoder.set_max()
        dense = count_flops(encoder, cfg.data.resolution)
        encoder.set_active(space.max_config(gate_threshold=cfg.gates.threshold))
        flops = FlopsReference(dense=float(dense), gated_static=float(static_flops(encoder, cfg.data.resolution)))
        encoder.set_max()
    groups = parameter_groups(method, weight_decay=cfg.regularization.weight_decay, decay_encoder=not cfg.regularization.group)
    lr = cfg.optim.lr * cfg.batch_size / 256  # linear scaling rule (Goyal et al. 2017)
    optimizer = build_optimizer(cfg.optim.name, groups, lr=lr, momentum=cfg.optim.momentum)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # bf16 autocast needs no loss scaling
    eval_data = None
    if cfg.knn.enabled:
        eval_data = prepare_eval_data(data, resolution=cfg.data.resolution, calibration_images=cfg.knn.calibration_images,
                                      bank_size=cfg.knn.bank_size, seed=cfg.seed)
    run = Run(cfg, out_dir, device, space, data, method, optimizer, scaler, steps_per_epoch, total_steps, stop_step, flops,
              lr, eval_data, dist_env)
    if cfg.resume and checkpoint_path.exists():
        _restore(run, load_checkpoint(checkpoint_path, map_location=device))
        print(f"resumed {checkpoint_path} at step {run.step}/{total_steps}")
    if dist_env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out_dir / "run_info.json").write_text(json.dumps({**run_info(device), "world_size": dist_env.world_size}, indent=2))
    barrier(dist_env)
    return run


def save_checkpoint(run: Run) -> None:
    """Atomic checkpoint by rank 0; the other ranks wait so nobody runs ahead of a checkpoint."""
    if not run.dist.is_main:
        barrier(run.dist)
        return
    payload = {
        "format": CHECKPOINT_FORMAT,
        **{key: value for key, value in provenance().items() if key in ("version", "git_commit")},
        "space": run.space.name,
        "with_gates": bool(run.cfg.gates.enabled),
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        "step": run.step,
        "total_steps": run.total_steps,
        "method": run.method.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    atomic_save(payload, run.out_dir / CHECKPOINT_NAME, keep_previous=True)
    barrier(run.dist)


def _restore(run: Run, payload: dict[str, Any]) -> None:
    saved = payload["config"]
    for key, current in (("model.space", run.space.name), ("batch_size", run.cfg.batch_size), ("epochs", run.cfg.epochs),
                         ("seed", run.cfg.seed), ("gates.enabled", bool(run.cfg.gates.enabled))):
        value = OmegaConf.select(OmegaConf.create(saved), key)
        if value != current:
            raise CheckpointError(
                f"{key}: the checkpoint was trained with {value!r}, this run asks for {current!r}; "
                "resume with the same settings or start a new out_dir"
            )
    run.method.load_state_dict(payload["method"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"]["torch"])
    if payload["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    run.step = int(payload["step"])


def _device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise SetupError(f"device: {name!r} is not valid; expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SetupError("device: cuda was asked for but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def _view_kwargs(cfg: DictConfig) -> dict[str, Any]:
    if cfg.views.name == "sslight":
        return {"num_local": cfg.views.num_local, "local_resolution": cfg.views.local_resolution}
    return {}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as file:
        file.write(json.dumps(record) + "\n")


def run_info(device: torch.device) -> dict[str, Any]:
    return {**provenance(), "device": str(device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
