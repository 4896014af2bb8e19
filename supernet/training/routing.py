"""The routers' own training stage, after the supernet's (DS-Net's stage II, without labels).

The supernet is frozen: its weights and every buffer (BatchNorm statistics, MoCo's queue) are as training
left them, and its BatchNorms normalise with batch statistics, as in its training. Per batch of views, for
every width level the whole network runs the *uniform route* at that level (every router group at the level,
the blocks before the first router at full width): each router reads the pooled features entering its block
on that route, and the route's embedding of each global view (:meth:`supernet.ssl.base.SSLMethod.route_embeddings`)
is compared with the teacher's embedding of the same view over the batch
(:func:`supernet.losses.routing.route_targets`). Every router learns the same targets from what it sees on
every level's route, since at inference the level its input arrives at is whatever the routers before it
chose. AdamW on the routers alone.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from supernet.losses.routing import route_targets, router_loss
from supernet.nn.routing import RouterSet
from supernet.training.distributed import average_gradients
from supernet.training.sandwich import step_generator
from supernet.training.setup import Run

__all__ = ["frozen_buffers", "routing_step", "train_routers"]


@contextlib.contextmanager
def frozen_buffers(module: nn.Module) -> Iterator[None]:
    """Every buffer of ``module`` (BatchNorm statistics, queues) as it was, whatever runs inside."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, copy in saved:
                buffer.copy_(copy)


def _entering(run: Run, routers: RouterSet) -> tuple[dict[str, list[torch.Tensor]], list[Any]]:
    """Forward pre-hooks on the router blocks that record the pooled features entering them (per call)."""
    modules = dict(run.encoder.named_modules())
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in routers.blocks}
    hooks = [modules[name].register_forward_pre_hook(
        lambda module, args, name=name: seen[name].append(torch.flatten(nn.functional.adaptive_avg_pool2d(args[0], 1), 1)))
        for name in routers.blocks]
    return seen, hooks


def routing_step(run: Run, routers: RouterSet, optimizer: torch.optim.Optimizer, views: list[torch.Tensor],
                 step: int) -> dict[str, torch.Tensor]:
    """One update of the routers on one batch; returns the loss and each level's agreement rate (on the device)."""
    method, space = run.method, run.space
    global_views = views[: method.num_global]
    with torch.no_grad(), frozen_buffers(method):
        method.train()
        with run.autocast:
            targets = method.teacher_targets(global_views, generator=step_generator(run.cfg.seed, step, stream=2))
        seen, hooks = _entering(run, routers)
        try:
            level_embeddings = []
            for multiplier in routers.levels:
                run.encoder.set_active(space.route_widths(space.max_config(), dict.fromkeys(routers.blocks, multiplier)))
                with run.autocast:
                    level_embeddings.append(method.route_embeddings(global_views))
        finally:
            for hook in hooks:
                hook.remove()
            run.encoder.set_max()
        # one target row per (global view, image): each level's embedding of a view against the teacher's
        # embeddings of the *other* view, the pairing the sub-networks are trained on (US3L, MoCo)
        count = len(global_views)
        labels = torch.cat([route_targets([per_level[view] for per_level in level_embeddings], targets[(view + 1) % count])
                            for view in range(count)])
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for name in routers.blocks:
        # seen[name]: one entry per (level, view), in that order; each level's inputs carry every view's labels
        for level in range(len(routers.levels)):
            pooled = torch.cat(seen[name][level * len(global_views) : (level + 1) * len(global_views)])
            losses.append(router_loss(routers.router(name).decide(pooled.float()), labels))
    loss = torch.stack(losses).mean()
    loss.backward()
    average_gradients(routers, run.dist)
    optimizer.step()
    return {"loss": loss.detach(), **{f"agree/{m:g}": labels[:, j].mean() for j, m in enumerate(routers.levels[:-1])}}


def train_routers(run: Run, log: Callable[[dict[str, Any]], None], *,
                  stop: Callable[[bool], bool] | None = None) -> RouterSet | None:
    """Train ``run``'s routers for ``routing.epochs`` epochs of its training views; returns them (on the device).

    ``log`` takes each logged record; ``stop(sync_point)`` is asked after every step (a stop signal: the stage
    is abandoned and None returned)."""
    from supernet.training.loop import BatchSource, scalars

    settings = run.cfg.routing
    routers = RouterSet(run.space, levels=settings.levels, hidden_channels=settings.hidden_channels).to(run.device)
    optimizer = torch.optim.AdamW(routers.parameters(), lr=settings.lr, weight_decay=0.0)
    source = BatchSource(run)
    steps, started = 0, time.perf_counter()
    total = settings.epochs * run.steps_per_epoch
    for epoch in range(settings.epochs):
        # epochs after the supernet's, so the routers see views the supernet's last epoch did not
        for views in source.epoch(run.cfg.epochs + epoch):
            terms = routing_step(run, routers, optimizer, views, run.total_steps + steps)
            steps += 1
            log_due = steps % run.cfg.log_every_steps == 0
            if log_due or steps == total:
                values = scalars(terms)
                log({"kind": "routing", "step": steps, "of": total,
                     "images_per_s": steps * run.cfg.batch_size / (time.perf_counter() - started), **values})
                if run.dist.is_main and run.cfg.progress:
                    print(f"routers {steps}/{total}: loss {values['loss']:.4f}, agreement "
                          + ", ".join(f"{k[6:]} {v:.2f}" for k, v in values.items() if k.startswith("agree/")),
                          file=sys.stdout, flush=True)
            if stop is not None and steps < total and stop(log_due):
                return None
    return routers
