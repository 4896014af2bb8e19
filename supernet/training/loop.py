"""One self-supervised training run of a slimmable, gated supernet: ``train(cfg)``.

Each step (US3L + SlimCLR + Krishna et al.):

1. the EMA teacher embeds the global views at full width, once (the temporally consistent target);
2. sandwich (:mod:`supernet.training.sandwich`): the full-width student takes the method's SSL
   loss; the smallest network the dynamic-sampling stage allows and N-2 random per-layer configs
   regress the teacher through the auxiliary head; during the slow start only full width trains;
3. a gated pass with Gumbel-sigmoid gates, plus the budget loss toward ``gates.target`` and the
   per-layer density bounds;
4. group regularization (US3L) on the encoder's gradients, optimizer step, the method's
   ``after_step`` (MoCo's queue, DINO's center), EMA update.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from search_spaces import SubnetConfig
from supernet.cli import CommandFailed
from supernet.data.batched_views import BatchedViews
from supernet.data.device_batches import DeviceBatches
from supernet.data.sampling import EpochSampler, ViewDataset
from supernet.data.store import ImageStore, build_store
from supernet.data.views import build_views, plan_views
from supernet.io.checkpoint import CHECKPOINT_NAME
from supernet.losses import (
    density_bound_loss,
    density_bounds,
    flops_budget_loss,
    loss_weights,
)
from supernet.training.distributed import (
    average_gradients,
    gather_digests,
    shutdown,
)
from supernet.training.interrupts import StopSignals, stop_agreed
from supernet.training.logs import RunLog
from supernet.training.monitor import log_baselines, monitor_knn
from supernet.training.sandwich import (
    plan_gated,
    plan_subnets,
    relative_size,
    step_generator,
)
from supernet.training.schedules import ema_momentum, group_alpha, warmup_cosine_lr
from supernet.training.schema import TrainConfig
from supernet.training.setup import Run, build_run, save_checkpoint, view_options

__all__ = ["BatchSource", "TrainingStopped", "check_health", "scalars", "train", "train_step"]


class TrainingStopped(CommandFailed):
    """Training cannot go on (non-finite loss, collapsed features); the last good checkpoint is kept."""


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the supernet described by ``cfg``; return the run directory.

    Ctrl-C or SIGTERM (:mod:`supernet.training.interrupts`) finish the current step, write a checkpoint and
    raise :class:`supernet.cli.Interrupted` (exit code 130 or 143), so that ``resume=true`` loses nothing.
    """
    run = build_run(cfg)
    log = RunLog(run.out_dir, enabled=run.dist.is_main)
    try:
        with StopSignals() as signals:
            _train(run, log, signals)
    finally:
        log.close()
    _check_replicas(run)
    shutdown(run.dist)
    return run.out_dir


def _train(run: Run, log: RunLog, signals: StopSignals) -> None:
    cfg = run.cfg
    source = BatchSource(run)
    if run.step == 0 and cfg.knn.enabled and run.dist.is_main:
        log.append(log_baselines(run))
    while run.step < run.stop_step:
        epoch, start_batch = divmod(run.step, run.steps_per_epoch)
        progress = tqdm(source.epoch(epoch, start_batch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                        disable=not (cfg.progress and run.dist.is_main), leave=False, initial=start_batch,
                        total=run.steps_per_epoch, file=sys.stdout)
        started, images_seen = time.perf_counter(), 0
        for batch in progress:
            terms = train_step(run, batch)
            run.step += 1
            images_seen += batch[0].shape[0] * run.dist.world_size
            checkpoint_due = bool(cfg.checkpoint_every_steps) and run.step % cfg.checkpoint_every_steps == 0
            epoch_end = run.step % run.steps_per_epoch == 0 or run.step == run.stop_step
            log_due = run.step % cfg.log_every_steps == 0
            # The one host sync of a step, and only every log_every_steps: reading the losses waits for
            # the device; before a checkpoint it also keeps a non-finite or collapsed state out of it.
            if log_due or checkpoint_due or epoch_end:
                values = check_health(run, terms)
                throughput = images_seen / max(time.perf_counter() - started, 1e-9)
                progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.3g}", img_s=f"{throughput:.0f}")
                if log_due or run.step == run.stop_step:
                    log.append({"kind": "step", "step": run.step, "epoch": epoch, "images_per_s": throughput, **values})
            if checkpoint_due:
                save_checkpoint(run)
            if run.step >= run.stop_step:
                break
            # An epoch's end keeps its kNN record and checkpoint below; anywhere else a signal stops here.
            if not epoch_end and stop_agreed(signals, run.dist, run.device, sync_point=log_due or checkpoint_due):
                progress.close()
                _stop(run, signals, terms, checkpoint_written=checkpoint_due)
        progress.close()
        if run.step % run.steps_per_epoch == 0 or run.step == run.stop_step:
            record: dict[str, Any] = {"kind": "epoch", "step": run.step, "epoch": epoch + 1}
            if cfg.knn.enabled and run.dist.is_main and ((epoch + 1) % cfg.knn.every_epochs == 0 or run.step == run.stop_step):
                record["knn"] = monitor_knn(run)
                print(f"epoch {epoch + 1}: kNN top-1 {_format_knn(record['knn'])}")
            log.append(record)
            save_checkpoint(run)
            if run.step < run.stop_step and stop_agreed(signals, run.dist, run.device, sync_point=True):
                _stop(run, signals, None, checkpoint_written=True)

    if cfg.routing.enabled and run.routers_step != run.step:
        from supernet.training.routing import train_routers

        # a stop signal here ends the stage: the checkpoint of the last epoch stands, without routers
        stop = lambda sync_point: stop_agreed(signals, run.dist, run.device, sync_point=sync_point)  # noqa: E731
        routers = train_routers(run, log.append, stop=stop)
        if routers is None:
            _stop(run, signals, None, checkpoint_written=True)
        run.routers, run.routers_step = routers, run.step
        save_checkpoint(run)


def _stop(run: Run, signals: StopSignals, terms: dict[str, torch.Tensor | float] | None, *,
          checkpoint_written: bool) -> NoReturn:
    """After a stop signal: the checkpoint of this step (unless written already; never of a non-finite or
    collapsed state), one line, and :class:`supernet.cli.Interrupted`."""
    if not checkpoint_written:
        if terms is not None:
            check_health(run, terms)
        save_checkpoint(run)
    stopped = signals.interrupted(step=run.step, total_steps=run.total_steps,
                                  checkpoint=str(run.out_dir / CHECKPOINT_NAME), announce=run.dist.is_main)
    shutdown(run.dist)
    raise stopped


class BatchSource:
    """A run's training batches, epoch by epoch, as lists of view batches on its device (channels-last
    on CUDA when ``channels_last``): made on the device from a uint8 store (``data.pipeline=device``)
    or by the PIL views in DataLoader workers (``loader``). ``store``: the run's training images already
    decoded (a benchmark setting up several runs on one data set decodes them once)."""

    def __init__(self, run: Run, *, store: ImageStore | None = None) -> None:
        self.run = run
        self.device_batches = _device_batches(run, store) if run.pipeline.name == "device" else None
        self.train_set: ViewDataset | None = None
        if self.device_batches is None:
            views, _ = build_views(run.cfg.views.name, run.cfg.data.resolution, view_options(run.cfg))
            self.train_set = ViewDataset(run.data.train, views, seed=run.cfg.seed)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[list[torch.Tensor]]:
        """The batches of ``epoch`` from ``start_batch`` on (a resumed run starts mid-epoch)."""
        run, cfg = self.run, self.run.cfg
        batches: Iterable[list[torch.Tensor]]
        if self.device_batches is not None:
            batches = self.device_batches.epoch(epoch, start_batch)
        else:
            assert self.train_set is not None
            sampler = EpochSampler(len(self.train_set), seed=cfg.seed, epoch=epoch, batch_size=cfg.batch_size,
                                   start_batch=start_batch, rank=run.dist.rank, world_size=run.dist.world_size)
            # The loader's own generator keeps worker seeding off the global RNG (Gumbel noise), so
            # where a run resumes does not shift the noise stream.
            batches = DataLoader(
                self.train_set, batch_size=cfg.batch_size // run.dist.world_size, sampler=sampler, drop_last=True,
                num_workers=cfg.data.num_workers, pin_memory=run.device.type == "cuda",
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
            )
        channels_last = run.device.type == "cuda" and cfg.channels_last
        for batch in batches:
            batch = [v.to(run.device, non_blocking=True) for v in batch]
            yield [v.contiguous(memory_format=torch.channels_last) for v in batch] if channels_last else batch


def _device_batches(run: Run, store: ImageStore | None = None) -> DeviceBatches:
    """Decode the training images once into a uint8 store on the run's device (unless ``store`` holds them);
    views are made there."""
    cfg, choice = run.cfg, run.pipeline
    assert choice.layout is not None and choice.sizes is not None
    if store is not None:
        if store.layout != choice.layout or store.pixels.device.type != run.device.type:
            raise ValueError(f"store: {store.layout.describe()} on {store.pixels.device} is not this run's "
                             f"{choice.layout.describe()} on {run.device}")
    else:
        started = time.perf_counter()
        store = build_store(run.data.train, sizes=choice.sizes, layout=choice.layout, device=run.device,
                            num_workers=cfg.data.num_workers)
        if run.dist.is_main:
            print(f"image store: {choice.layout.describe()} on {run.device} in {time.perf_counter() - started:.1f} s")
    plan = plan_views(cfg.views.name, cfg.data.resolution, view_options(cfg))
    return DeviceBatches(store=store, views=BatchedViews(plan=plan), seed=cfg.seed, batch_size=cfg.batch_size,
                         rank=run.dist.rank, world_size=run.dist.world_size)


def train_step(run: Run, views: list[torch.Tensor], plan: list[tuple[str, SubnetConfig]] | None = None
               ) -> dict[str, torch.Tensor | float]:
    """One training step on a batch; returns the named loss terms (weighted as used), lr and schedule values.

    Loss terms stay on the device (0-d tensors, detached) so the step never waits for it; read them
    with :func:`scalars` (or :func:`check_health`, which also stops a run gone bad). ``plan``
    (label, config) overrides the sandwich of this step (benchmarks time single networks with it);
    the label "max" marks the network that takes the method's full-width loss. With
    ``sandwich.optimizer_steps=per_network`` (US3L) every network's loss is its own optimizer step;
    with ``per_batch`` (SlimCLR) their gradients add up into one.
    """
    cfg, method, encoder = run.cfg, run.method, run.encoder
    lr = warmup_cosine_lr(run.step, run.total_steps, base_lr=run.lr, warmup_steps=run.warmup_steps,
                          final_lr=cfg.optim.final_lr)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    alpha = group_alpha(run.step, run.total_steps, max_alpha=cfg.regularization.max_alpha,
                        ramp_fraction=cfg.regularization.alpha_ramp_fraction) if cfg.regularization.group else 0.0
    per_network = cfg.sandwich.optimizer_steps == "per_network"
    method.train()
    method_schedule = method.set_epoch(run.step / run.steps_per_epoch)  # e.g. DINO's teacher temperature
    with run.autocast:
        targets = method.teacher_targets(views, generator=step_generator(cfg.seed, run.step, stream=2))
    plan = plan or plan_subnets(
        run.space, seed=cfg.seed, step=run.step, total_steps=run.total_steps,
        num_subnets=cfg.sandwich.num_subnets if cfg.sandwich.enabled else 1,
        stage_min_widths=list(cfg.sandwich.stage_min_widths), stage_ends=list(cfg.sandwich.stage_ends),
        sampling=cfg.sandwich.sampling, fixed_widths=list(cfg.sandwich.fixed_widths),
    )
    sizes = [relative_size(run.space, subnet) for _, subnet in plan]
    weights = loss_weights(cfg.sandwich.loss_weights, sizes)
    logged: dict[str, torch.Tensor | float] = {}
    losses: list[torch.Tensor] = []
    cache: dict[str, Any] = {}
    projections: dict[str, list[torch.Tensor]] = {}  # each network's projections of the global views
    run.optimizer.zero_grad(set_to_none=True)
    for (label, subnet), weight in zip(plan, weights):
        encoder.set_active(subnet)
        with run.autocast:
            loss_of = method.full_width_loss if label == "max" else method.subnet_loss
            terms, projected = loss_of(views, targets, cache)
            loss = weight * sum(terms.values())
        projections[label] = [z.detach() for z in projected[: method.num_global]]
        losses.append(_backward(loss, {f"{label}/{name}": value for name, value in terms.items()}, logged))
        if per_network:
            _optimizer_step(run, alpha)
    if run.gate_flops is not None:
        losses.append(_gated_pass(run, views, targets, plan, projections, logged))
        if per_network:
            _optimizer_step(run, alpha)
    if not per_network:
        _optimizer_step(run, alpha)
    encoder.set_max()
    total = torch.stack(losses).sum()
    run.nonfinite_since = _first_nonfinite_step(run, total)
    probe = projections["max"][0] if "max" in projections else next(iter(projections.values()))[0]
    run.embedding_dim = probe.shape[1]
    momentum = cfg.ssl.base_momentum if cfg.ssl.momentum_schedule == "constant" else \
        ema_momentum(run.step, run.total_steps, base=cfg.ssl.base_momentum)
    # Before the teacher moves: DINO's center takes the teacher's scores of this step, as its loss saw them.
    method.after_step(targets)
    method.update_teacher(momentum)
    return {"loss": total, **logged, "embedding_std": method.embedding_std(probe), "lr": lr, "ema_momentum": momentum,
            "group_alpha": alpha, "min_width": min(sizes), "num_subnets": float(len(plan)), **method_schedule}


def scalars(terms: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """A step's terms as Python floats, read from the device in one transfer."""
    names = [name for name, value in terms.items() if isinstance(value, torch.Tensor)]
    read = dict(zip(names, torch.stack([terms[name].float().reshape(()) for name in names]).tolist())) if names else {}  # type: ignore[union-attr]
    return {name: read[name] if name in read else float(value) for name, value in terms.items()}


def check_health(run: Run, terms: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The step's terms as floats, after stopping the run if a loss went non-finite or the features collapsed.

    Non-finite losses are flagged on the device every step (:attr:`Run.nonfinite_since`) and read here,
    so the error names the first bad step although the host looks only every few steps.
    """
    values = scalars(terms)
    since = int(run.nonfinite_since)
    if since >= 0 or not math.isfinite(values["loss"]):
        bad = [name for name, value in values.items() if "/" in name and not math.isfinite(value)]
        raise TrainingStopped(
            f"loss is not finite since step {since if since >= 0 else run.step} ({', '.join(bad) or 'total'}); "
            "lower optim.lr or check the data. The last good checkpoint is kept."
        )
    floor = run.cfg.collapse_std / math.sqrt(run.embedding_dim)
    if values["embedding_std"] < floor:
        raise TrainingStopped(
            f"features collapsed at step {run.step}: per-dimension std of normalised embeddings "
            f"{values['embedding_std']:.2e} < {floor:.2e}; lower optim.lr or raise ssl.base_momentum. "
            "The last good checkpoint is kept."
        )
    return values


def _optimizer_step(run: Run, alpha: float) -> None:
    """Average gradients over ranks, add US3L's group decay, step, and clear the gradients."""
    reg = run.cfg.regularization
    average_gradients(run.method, run.dist)
    if run.group_decay is not None:
        run.group_decay.apply(reg.weight_decay, alpha)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


def _gated_pass(run: Run, views: list[torch.Tensor], targets: list[torch.Tensor], plan: list[tuple[str, SubnetConfig]],
                projections: dict[str, list[torch.Tensor]], logged: dict[str, torch.Tensor | float]) -> torch.Tensor:
    """Gumbel-sigmoid gates at one of the step's widths and sampled thresholds (Krishna et al.).

    SSL term (the method's ``gated_loss``): the gated network regresses, through the auxiliary
    head, the dense network's projection of the other view at the same width (``gates.link=dense``)
    or the EMA teacher's (``teacher``); VICReg takes its own loss against it (Krishna et al.).
    Budget terms: ``lambda * (FLOPs ratio - t_d)^2`` against that width's dense FLOPs, and the
    per-layer density bounds around ``sqrt(t_d)``. The budget uses the masks of the
    last global view's forward (an unbiased one-view estimate).
    """
    cfg, encoder, gates = run.cfg, run.encoder, run.cfg.gates
    label, gated = plan_gated(run.space, plan, seed=cfg.seed, step=run.step, threshold=gates.threshold,
                              sample_widths=gates.sample_widths, sample_thresholds=gates.sample_thresholds)
    assert run.gate_flops is not None
    flops = run.gate_flops(gated)
    encoder.set_active(gated)
    global_views = views[: run.method.num_global]
    with run.autocast:
        link = projections[label] if gates.link == "dense" else targets
        terms, _ = run.method.gated_loss(global_views, link)
        saved = encoder.gate_flops_saved()
        assert saved is not None
        gated_flops = flops.gated_static - saved.float()
        terms["budget"] = flops_budget_loss(gated_flops, flops.dense, gates.target, gates.budget_weight)
        densities = torch.stack([block.last_mask.float().mean() for block in encoder.gated_blocks()])  # type: ignore[union-attr]
        lower, upper = density_bounds(gates.target, run.step / run.steps_per_epoch, gates.bound_rate)
        terms["density"] = density_bound_loss(densities, lower, upper, gates.bound_weight)
        loss = sum(terms.values())
    logged["gated/flops_ratio"] = gated_flops.detach().mean() / flops.dense
    logged["gated/width"] = relative_size(run.space, gated)  # known on the host
    return _backward(loss, {f"gated/{name}": value for name, value in terms.items()}, logged)


def _backward(loss: torch.Tensor, terms: dict[str, torch.Tensor], logged: dict[str, torch.Tensor | float]) -> torch.Tensor:
    loss.backward()
    logged.update({name: term.detach() for name, term in terms.items()})
    return loss.detach()


def _first_nonfinite_step(run: Run, total: torch.Tensor) -> torch.Tensor:
    """``run.nonfinite_since``, set to this step if it is still unset (-1) and ``total`` is not finite."""
    flag = run.nonfinite_since.to(total.device)
    return torch.where((flag < 0) & ~torch.isfinite(total), torch.full_like(flag, run.step), flag)


def _check_replicas(run: Run) -> None:
    """Data-parallel runs end with every rank's parameter digest; they must all agree."""
    digests = gather_digests(run.method, run.dist)
    if not run.dist.enabled:
        return
    if run.dist.is_main:
        (run.out_dir / "replicas.json").write_text(json.dumps({"step": run.step, "parameter_sha256": digests}, indent=2))
    if len(set(digests)) != 1:
        raise TrainingStopped(f"replicas diverged: parameter digests differ across ranks at step {run.step}")


def _format_knn(scores: dict[str, float]) -> str:
    return ", ".join(f"{width} {score:.2%}" for width, score in scores.items())
