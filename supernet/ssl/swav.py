"""SwAV (Caron et al., NeurIPS 2020) for the slimmable supernet: swapped prediction of online codes.

Full width, as ``main_swav.py`` (``train``, ``distributed_sinkhorn``) and ``src/resnet50.py`` run it:
a projection head (Linear -> BN -> ReLU -> Linear, ``proj_hidden_dim`` wide) whose output is
L2-normalised (the *embedding*), then K prototypes, a Linear without bias whose rows are
L2-normalised in place before every step's forward, so scores are cosines. Each global view's
scores, with those of every data-parallel rank (``collectives.gather_rows``) and of the queue,
become codes by Sinkhorn-Knopp (:func:`supernet.losses.sinkhorn`: 3 iterations, epsilon 0.05,
float32); every *other* view (the other global one, and SSLight's local crops, ``views[num_global:]``)
predicts them through a softmax at temperature 0.1 (:func:`supernet.losses.swav_loss`).

* Prototypes are frozen for the first ``freeze_prototypes_epochs`` (SwAV's ``freeze_prototypes_niters``
  = 313 iterations, one ImageNet epoch at batch 4096; SSLight's ``FREEZE_PROTOTYPES_EPOCHS``): the
  student's scores then use detached prototypes, so their gradient stays ``None`` and the optimizer
  neither moves nor decays them, as SwAV's ``p.grad = None``.
* Sinkhorn runs on the gathered batch: every rank scores all ranks' embeddings with the (identical)
  prototypes and keeps its own rows (``collectives.own_rows``). Its normalisations then sum over the
  same columns as ``distributed_sinkhorn``'s all-reduced sums, so the codes are the same.
* Queue (``queue_length`` > 0): the embeddings of the global views from every rank, newest last,
  filled from epoch ``epoch_queue_starts`` on and used once full (SwAV: once its last row is no longer
  zero); its scores against the current prototypes join the Sinkhorn batch, their codes dropped.
  SwAV keeps ``queue_length / world_size`` rows per rank and rounds ``queue_length`` down to a
  multiple of the global batch; here one buffer (carried by checkpoints) holds exactly the last
  ``queue_length`` embeddings of all ranks, the same rows when it is such a multiple.
* Multi-crop weighting: global-global and local-global pairs are averaged apart and mixed with
  ``views.global_global_weight`` / ``global_local_weight`` (SSLight: 0.4 / 0.6). SwAV's own loss
  weighs every pair equally: with G global and L local views that is (G - 1) / (G + L - 1) and
  L / (G + L - 1), 1/7 and 6/7 for 2 + 6 crops (SSLight's baseline ``LAMBDAS``).

Sub-networks and the gated pass: SwAV has no momentum encoder, so ``configs/ssl/swav.yaml`` keeps
the teacher at ``base_momentum: 0``, a copy of the student taken before the step, and sub-networks
regress its full-width *embedding* of the other view through the US3L auxiliary head with ``-cos``
(US3L's rule for its methods without a momentum encoder, SimCLR and SimSiam: the max-width pass's
detached output). The embedding, not the codes: codes are balanced over the whole batch and queue
by Sinkhorn (a sample's code depends on the others), and they are one fixed map (the prototypes)
away from the embedding; sub-networks thus neither move the prototypes nor the queue. A momentum
above 0 makes the target US3L's temporally consistent EMA teacher instead.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supernet.losses import SINKHORN_EPSILON, SINKHORN_ITERATIONS, SWAV_TEMPERATURE, sinkhorn, swav_loss
from supernet.nn.heads import MLPHead
from supernet.nn.models import SuperNet
from supernet.ssl.base import SSLMethod


class SwAVHead(nn.Module):
    """SwAV's projection head then L2 normalisation: (B, C') -> (B, out_dim) unit rows, C' <= in_dim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, *, layers: int = 2) -> None:
        super().__init__()
        self.mlp = MLPHead(in_dim, hidden_dim, out_dim, layers=layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=1)


class SwAV(SSLMethod):
    """Prototypes ``(K, proj_dim)``, a Linear without bias; queue ``(num_global, queue_length, proj_dim)`` a buffer."""

    name = "swav"
    settings = ("temperature", "num_prototypes", "freeze_prototypes_epochs", "sinkhorn_iterations",
                "sinkhorn_epsilon", "queue_length", "epoch_queue_starts")

    def __init__(
        self,
        encoder: SuperNet,
        *,
        proj_hidden_dim: int,
        proj_dim: int,
        pred_hidden_dim: int,
        proj_layers: int = 2,
        temperature: float = SWAV_TEMPERATURE,
        num_prototypes: int = 3000,
        freeze_prototypes_epochs: float = 1.0,
        sinkhorn_iterations: int = SINKHORN_ITERATIONS,
        sinkhorn_epsilon: float = SINKHORN_EPSILON,
        queue_length: int = 0,
        epoch_queue_starts: int = 15,
        **kwargs: Any,
    ) -> None:
        head = SwAVHead(encoder.feature_dim, proj_hidden_dim, proj_dim, layers=proj_layers)
        super().__init__(encoder, proj_hidden_dim=proj_hidden_dim, proj_dim=proj_dim, pred_hidden_dim=pred_hidden_dim,
                         proj_layers=proj_layers, projector=head, **kwargs)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.normalize_prototypes()
        self.temperature = temperature
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.sinkhorn_iterations = sinkhorn_iterations
        self.sinkhorn_epsilon = sinkhorn_epsilon
        self.epoch_queue_starts = epoch_queue_starts
        self.register_buffer("queue", torch.zeros(self.num_global, queue_length, proj_dim))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))  # the next row to overwrite
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # rows written so far, at most queue_length
        self._pending: dict[int, torch.Tensor] = {}  # this step's gathered embeddings per global view, for the queue
        # ``queue_filled`` mirrored on the host, so no step reads the device to know whether the queue is full;
        # None: read it once (after a checkpoint restored the buffer)
        self._filled_rows: int | None = 0
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_filled_rows", None))
        self.set_epoch(0.0)

    @property
    def queue_length(self) -> int:
        return self.queue.shape[1]

    @property
    def queue_in_use(self) -> bool:
        """Whether the queue's scores join this step's Sinkhorn batch: filling, and full once."""
        if self._filled_rows is None:
            self._filled_rows = int(self.queue_filled)
        return self.queue_filling and self._filled_rows >= self.queue_length

    def set_epoch(self, epoch: float) -> dict[str, float]:
        """Whether the prototypes are frozen and the queue fills (from the whole epoch ``epoch_queue_starts``)."""
        self.prototypes_frozen = epoch < self.freeze_prototypes_epochs
        self.queue_filling = self.queue_length > 0 and math.floor(epoch) >= self.epoch_queue_starts
        return {"prototypes_frozen": float(self.prototypes_frozen), "queue_in_use": float(self.queue_in_use)}

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Each prototype (row) to unit L2 norm, in place (``main_swav.py``, before every forward)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        self.normalize_prototypes()
        embeddings = self.project(views)
        prototypes = self.prototypes.weight.detach() if self.prototypes_frozen else self.prototypes.weight
        scores = [F.linear(z, prototypes) for z in embeddings]
        codes = [self.assign(z, view) for view, z in enumerate(embeddings[: self.num_global])]
        pair_loss = partial(swav_loss, temperature=self.temperature)
        return {"swav": self.cross_view(scores, codes, pair_loss)}, embeddings

    @torch.no_grad()
    def assign(self, embeddings: torch.Tensor, view: int) -> torch.Tensor:
        """Codes (B, K) of this rank's embeddings (B, D) of global view ``view``: Sinkhorn over every
        rank's embeddings of that view and, once full, the queue's; float32, no gradient."""
        everyone = self.collectives.gather_rows(embeddings.detach().float().contiguous())
        with torch.autocast(device_type=everyone.device.type, enabled=False):
            prototypes = self.prototypes.weight.detach().float()
            scores = everyone @ prototypes.T
            if self.queue_in_use:
                scores = torch.cat([self.queue[view].float() @ prototypes.T, scores])
            codes = sinkhorn(scores, iterations=self.sinkhorn_iterations, epsilon=self.sinkhorn_epsilon)
        if self.queue_filling:
            self._pending[view] = everyone
        return self.collectives.own_rows(codes[-everyone.shape[0]:])

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor) -> None:
        """Write ``embeddings`` (num_global, N, D) over the oldest queue rows (every rank's, in rank order)."""
        length, count = self.queue_length, embeddings.shape[1]
        if count >= length:
            self.queue.copy_(embeddings[:, count - length:])
            self.queue_pointer.zero_()
        else:
            index = (torch.arange(count, device=self.queue.device) + self.queue_pointer) % length
            self.queue[:, index] = embeddings.to(self.queue.dtype)
            self.queue_pointer.copy_((self.queue_pointer + count) % length)
        self.queue_filled.copy_(torch.clamp(self.queue_filled + count, max=length))
        if self._filled_rows is not None:
            self._filled_rows = min(self._filled_rows + count, length)

    def after_step(self, targets: list[torch.Tensor]) -> None:
        """Queue this step's embeddings of the global views, after their codes were computed (as SwAV)."""
        if len(self._pending) == self.num_global:
            self.enqueue(torch.stack([self._pending[view] for view in range(self.num_global)]))
        self._pending.clear()
