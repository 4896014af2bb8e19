"""MoCo v2 (Chen et al. 2020) for the slimmable supernet: InfoNCE against a queue of teacher keys.

Sub-networks regress the teacher through the US3L auxiliary head; with
``online_distillation=True`` they take SlimCLR's online distillation instead: 0.5 * InfoNCE +
0.5 * KD of their contrastive logits toward the full network's. As in SlimCLR's code
(``models/s_moco.py``), the KD temperature T = 5 divides the *raw* cosine logits (q.k in [-1, 1]),
not the logits already divided by the InfoNCE temperature.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from supernet.losses import (
    SLIMCLR_KD_WEIGHT,
    contrastive_logits,
    info_nce,
    logit_distillation,
)
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod


class MoCoV2(SSLMethod):
    """Queue of ``queue_size`` L2-normalised teacher keys (a buffer, so checkpoints carry it)."""

    name = "moco"
    settings = ("temperature", "queue_size", "online_distillation")

    def __init__(
        self,
        encoder: SuperNet,
        *,
        proj_hidden_dim: int,
        proj_dim: int,
        pred_hidden_dim: int,
        temperature: float = 0.2,
        queue_size: int = 4096,
        online_distillation: bool = False,
        distill_temperature: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim, **kwargs)
        self.temperature = temperature
        self.online_distillation = online_distillation
        self.distill_temperature = distill_temperature
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim, generator=generator), dim=1))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def _logits(self, projections: list[torch.Tensor], targets: list[torch.Tensor]) -> list[tuple[int, torch.Tensor]]:
        """(view index, logits (B, 1+K)) for every global-target pair of different views."""
        pairs = []
        for i, z in enumerate(projections):
            for j, key in enumerate(targets):
                if i != j:
                    logits = contrastive_logits(F.normalize(z, dim=1), F.normalize(key, dim=1), self.queue, self.temperature)
                    pairs.append((i, logits))
        return pairs

    def _mix(self, terms: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        global_terms = [t for i, t in terms if i < self.num_global]
        local_terms = [t for i, t in terms if i >= self.num_global]
        loss = torch.stack(global_terms).mean()
        if local_terms:
            loss = self.global_global_weight * loss + self.global_local_weight * torch.stack(local_terms).mean()
        return loss

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        projections = self.project(views)
        logits = self._logits(projections, targets)
        cache["logits"] = [lg.detach() for _, lg in logits]
        return {"infonce": self._mix([(i, info_nce(lg)) for i, lg in logits])}, projections

    def route_embeddings(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """With online distillation sub-networks contrast their own projections with the teacher's keys (the
        auxiliary head is not trained); else US3L's auxiliary-head prediction."""
        if self.online_distillation:
            return self.project(views[: self.num_global])
        return super().route_embeddings(views)

    def subnet_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        if not self.online_distillation:
            return super().subnet_loss(views, targets, cache)
        projections = self.project(views)
        logits = self._logits(projections, targets)
        contrastive = self._mix([(i, info_nce(lg)) for i, lg in logits])
        tau = self.temperature  # undo the InfoNCE temperature: SlimCLR distils raw cosine logits
        distill = self._mix([(i, logit_distillation(lg * tau, teacher * tau, self.distill_temperature))
                             for (i, lg), teacher in zip(logits, cache["logits"])])
        return {"infonce": (1 - SLIMCLR_KD_WEIGHT) * contrastive, "kd": SLIMCLR_KD_WEIGHT * distill}, projections

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest queue entries with ``keys`` (B, D) (normalised here)."""
        size, count = self.queue.shape[0], keys.shape[0]
        keys = F.normalize(keys.float(), dim=1)[:size]
        # the pointer stays on the device: no step waits to read it
        index = (torch.arange(keys.shape[0], device=keys.device) + self.queue_pointer) % size
        self.queue.index_copy_(0, index, keys.to(self.queue.dtype))
        self.queue_pointer.add_(count).remainder_(size)

    def after_step(self, targets: list[torch.Tensor]) -> None:
        """Enqueue the teacher keys of the first view from every rank, in the global batch's order, so all
        queues stay equal (and equal to one process's)."""
        self.enqueue(self.collectives.gather_batch(targets[0]))
