"""What every self-supervised method of the slimmable supernet shares.

A method owns the student (the supernet encoder plus its heads), an EMA teacher at full width
(US3L: the temporally consistent target every sub-network regresses), and the losses. The training
loop owns the schedules: it calls :meth:`set_epoch` with the training progress of the step, then
:meth:`teacher_targets` once, then :meth:`full_width_loss` at full width, :meth:`subnet_loss` at
each sampled sub-network and :meth:`gated_loss` for the gated pass, then :meth:`after_step` and
:meth:`update_teacher` with the momentum of the step.

Methods whose papers have no momentum encoder (SimCLR, SimSiam, VICReg) keep the teacher with
momentum 0: it is then a copy of the student taken before the step, so the sub-networks regress the
full-width student's own output, as US3L's code does for SimCLR and SimSiam.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from supernet.losses import negative_cosine
from supernet.nn.heads import MLPHead
from supernet.nn.models import SuperNet

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _same_rows(rows: torch.Tensor) -> torch.Tensor:
    return rows


@dataclass(frozen=True)
class Collectives:
    """What a method may ask of data-parallel training; one process by default.

    ``gather_rows`` concatenates a (B, ...) tensor from every rank in rank order, without gradient
    (MoCo's queue keys, DINO's center, SwAV's Sinkhorn over the global batch, Shuffle-BN). The
    training loop sets :attr:`SSLMethod.collectives` from its process group.
    """

    rank: int = 0
    world_size: int = 1
    gather_rows: Callable[[torch.Tensor], torch.Tensor] = field(default=_same_rows)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def gather_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows in the global batch's order (rank r holds its positions r, r + W, ...; see
        :class:`supernet.data.sampling.EpochSampler`), so a tensor built from them is the one a single
        process would build."""
        gathered = self.gather_rows(rows)
        if self.world_size == 1:
            return gathered
        return gathered.view(self.world_size, -1, *gathered.shape[1:]).transpose(0, 1).reshape(-1, *gathered.shape[1:])

    def own_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of rows gathered from every rank (the inverse of ``gather_rows``)."""
        share = rows.shape[0] // self.world_size
        return rows[self.rank * share : (self.rank + 1) * share]


@torch.no_grad()
def shuffled_forward(
    network: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    collectives: Collectives,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``network``'s outputs for this rank's ``images`` (B, ...), computed on a shuffled global batch.

    MoCo's Shuffle-BN (He et al., CVPR 2020, section 3.3; facebookresearch/moco ``_batch_shuffle_ddp``):
    the key encoder's BatchNorm statistics come from a random set of samples, not from the samples
    whose queries the student normalised together, so a positive pair shares no batch-statistics
    signature that queued negatives lack. The global batch is gathered from every rank, permuted with
    ``generator`` (seeded identically on every rank, so no broadcast is needed), each rank embeds
    its interleaved share of the permuted batch with per-rank (or split, see
    :func:`supernet.nn.ops._split_batch_norm`) BatchNorm, and the outputs are gathered and returned
    in the original order. One process: the batch itself is permuted and restored.
    """
    world = collectives.world_size
    if collectives.enabled and generator is None:
        raise ValueError("shuffled_forward: data-parallel ranks must draw the same permutation; pass a generator "
                         "seeded the same way on every rank")
    everything = collectives.gather_batch(images)
    order = torch.randperm(everything.shape[0], generator=generator).to(images.device, non_blocking=True)
    outputs = network(everything[order][collectives.rank :: world])
    shuffled = collectives.gather_batch(outputs)
    restored = torch.empty_like(shuffled)
    restored[order] = shuffled
    return restored[collectives.rank :: world]


class SSLMethod(nn.Module):
    """Student encoder + projector + US3L auxiliary predictor, EMA teacher, cross-view losses.

    ``views``: list of image batches, the ``num_global`` global crops first (SSLight multi-crop:
    local crops only ever predict global targets). Loss terms are returned as named dicts.
    """

    name: ClassVar[str]
    settings: ClassVar[tuple[str, ...]] = ()  # the method's own ``ssl.*`` settings, passed as keywords

    def __init__(
        self,
        encoder: SuperNet,
        *,
        proj_hidden_dim: int,
        proj_dim: int,
        pred_hidden_dim: int,
        proj_layers: int = 2,
        num_global: int = 2,
        global_global_weight: float = 1.0,
        global_local_weight: float = 0.0,
        projector: nn.Module | None = None,
        shuffle_bn: bool = False,
    ) -> None:
        """``projector``: the method's own head (B, C') -> (B, proj_dim), reading the first C' <=
        ``encoder.feature_dim`` features; default ``MLPHead(feature_dim, proj_hidden_dim, proj_dim)``.
        ``shuffle_bn``: the teacher embeds each view in a shuffled order (MoCo's Shuffle-BN, with
        per-rank or split BatchNorm set up by the training run; :func:`shuffled_forward`)."""
        super().__init__()
        encoder.set_max()
        self.encoder = encoder
        if projector is None:
            projector = MLPHead(encoder.feature_dim, proj_hidden_dim, proj_dim, layers=proj_layers)
        self.projector = projector
        # US3L: sub-networks regress the teacher through their own head, so the full network's
        # predictor is not pulled toward what small networks can produce.
        self.aux_predictor = MLPHead(proj_dim, pred_hidden_dim, proj_dim)
        self.teacher_encoder = copy.deepcopy(encoder)
        self.teacher_projector = copy.deepcopy(self.projector)
        for param in self.teacher_parameters():
            param.requires_grad_(False)
        self.num_global = num_global
        self.global_global_weight = global_global_weight
        self.global_local_weight = global_local_weight
        self.shuffle_bn = shuffle_bn
        self.collectives = Collectives()

    # -- teacher -------------------------------------------------------------------------------
    def teacher_parameters(self) -> list[nn.Parameter]:
        return [*self.teacher_encoder.parameters(), *self.teacher_projector.parameters()]

    def student_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.teacher_encoder), (self.projector, self.teacher_projector)]

    @torch.no_grad()
    def teacher_targets(self, views: list[torch.Tensor], *, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The teacher's full-width outputs (B, proj_dim) for each global view; computed once per step.

        With ``shuffle_bn`` each view is embedded in an order drawn from ``generator`` (the same on
        every rank) and returned in the original order.
        """
        self.teacher_encoder.set_max()

        def embed(images: torch.Tensor) -> torch.Tensor:
            return self.teacher_projector(self.teacher_encoder(images))

        if not self.shuffle_bn:
            return [embed(view) for view in views[: self.num_global]]
        return [shuffled_forward(embed, view, self.collectives, generator=generator) for view in views[: self.num_global]]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student; buffers (BN statistics) copied."""
        for student, teacher in self.student_pairs():
            teacher_params, teacher_buffers = list(teacher.parameters()), list(teacher.buffers())
            if teacher_params:
                torch._foreach_lerp_(teacher_params, list(student.parameters()), 1.0 - momentum)
            if teacher_buffers:
                torch._foreach_copy_(teacher_buffers, list(student.buffers()))

    def after_step(self, targets: list[torch.Tensor]) -> None:
        """Hook after the optimizer step, before the teacher's update (data-parallel ops: :attr:`collectives`)."""

    def set_epoch(self, epoch: float) -> dict[str, float]:
        """Take the method's schedules at ``epoch`` (epochs done, fractional), before the step's losses.

        The loop calls it once per step; the values returned are logged with the step's terms.
        """
        return {}

    # -- losses ----------------------------------------------------------------------------------
    def project(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student projections (B, proj_dim) of every view at the encoder's active config."""
        return [self.projector(self.encoder(view)) for view in views]

    def cross_view(self, outputs: list[torch.Tensor], targets: list[torch.Tensor], pair_loss: PairLoss) -> torch.Tensor:
        """Loss of each view's output against the targets of the *other* global views.

        Global-global pairs and local-global pairs are averaged separately and mixed with the
        SSLight weights (0.4 / 0.6); with no local views the global-global mean is the loss.
        ``pair_loss`` may return a scalar or a vector of terms (averaged element-wise).
        """
        global_terms, local_terms = [], []
        for i, output in enumerate(outputs):
            for j, target in enumerate(targets):
                if i == j:
                    continue
                (global_terms if i < self.num_global else local_terms).append(pair_loss(output, target))
        global_loss = torch.stack(global_terms).mean(dim=0)
        if not local_terms:
            return global_loss
        local_loss = torch.stack(local_terms).mean(dim=0)
        return self.global_global_weight * global_loss + self.global_local_weight * local_loss

    def full_width_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Loss terms of the full-width student and its projections (B, proj_dim) of every view.

        ``cache`` carries what the sub-network losses of the same step may reuse.
        """
        raise NotImplementedError

    def subnet_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor], cache: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """US3L: the active sub-network regresses the teacher's full-width output via the auxiliary head."""
        return self.regression_loss(views, targets)

    def route_embeddings(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The active sub-network's embeddings (B, D) of each global view in the space of the teacher's targets:
        what its loss brings toward them (US3L: the auxiliary head's prediction). The width routers' label-free
        targets compare them with the teacher's (:mod:`supernet.losses.routing`)."""
        return [self.aux_predictor(z) for z in self.project(views[: self.num_global])]

    def gated_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """The gated pass's SSL terms against ``targets`` (the dense network's or the teacher's
        projections of the global views): by default the auxiliary-head regression."""
        return self.regression_loss(views, targets)

    def regression_loss(
        self, views: list[torch.Tensor], targets: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """``-cos(aux_predictor(z_i), target_j)`` over cross-view pairs, and the projections ``z``.

        The targets are the EMA teacher's full-width outputs for sub-networks (US3L), or the dense
        network's projections of the other view for the gated pass (Krishna et al.); detached.
        """
        projections = self.project(views)
        outputs = [self.aux_predictor(z) for z in projections]
        return {"distill": self.cross_view(outputs, [t.detach() for t in targets], negative_cosine)}, projections

    def embedding_std(self, projections: torch.Tensor) -> torch.Tensor:
        """Mean per-dimension std of L2-normalised projections (B, D), a 0-d tensor on their device;
        ~1/sqrt(D) when healthy, ~0 when collapsed."""
        normalized = nn.functional.normalize(projections.detach().float(), dim=1)
        return normalized.std(dim=0).mean()
