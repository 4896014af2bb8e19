"""Label-free targets and loss of the width routers (:mod:`supernet.nn.routing`).

DS-Net (Li et al., CVPR 2021) trains its gate with "sandwich gate sparsification": an input the slimmest
sub-network classifies correctly is an easy one, whose target is the slimmest width; any other input's is
the widest. Without labels, "correct" becomes *agreement with the full-width teacher*: a route's embedding of
one view of an image (what the method trains sub-networks to match the teacher with, e.g. US3L's
auxiliary-head prediction) agrees when, among the teacher's embeddings of the other view of every image of the
batch, the nearest one (cosine) is that same image's -- the route still tells this image apart as the teacher
sees it (instance discrimination across views, the pretext task itself). Each router then learns, for every level but the widest, the
probability that the level agrees (:func:`router_loss`, binary cross-entropy per level); at inference the
searched threshold turns those probabilities into a level (:func:`supernet.nn.routing.route_levels`).

No budget term: DS-Net adds a FLOPs loss because its gate's argmax is the only operating point it has; here
the threshold is searched, so one router must rank inputs by how narrow they can go, not sit at one cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["instance_agreement", "route_targets", "router_loss"]


def instance_agreement(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: row i of ``embeddings`` (B, D) is nearer (cosine) to ``targets[i]`` than to every other row
    of ``targets`` (B, D). An exact tie with another row counts as disagreement (the lower index wins it).

    >>> e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    >>> instance_agreement(e, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])).tolist()
    [True, True, False]
    """
    if embeddings.shape != targets.shape or embeddings.dim() != 2:
        raise ValueError(f"instance_agreement: expected two (B, D) tensors of one shape, got "
                         f"{tuple(embeddings.shape)} and {tuple(targets.shape)}")
    similarity = F.normalize(embeddings.float(), dim=1) @ F.normalize(targets.float(), dim=1).T
    return similarity.argmax(dim=1) == torch.arange(embeddings.shape[0], device=embeddings.device)


def route_targets(level_embeddings: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """(B, K - 1) float targets: 1 where level j (narrow to wide) agrees with the teacher, for every level but
    the widest (``level_embeddings``: K tensors (B, D), narrowest first; ``targets``: the teacher's (B, D))."""
    if len(level_embeddings) < 2:
        raise ValueError("route_targets: expected the embeddings of two or more levels")
    return torch.stack([instance_agreement(e, targets) for e in level_embeddings[:-1]], dim=1).float()


def router_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of a router's logits (B, K - 1) against :func:`route_targets` (B, K - 1)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
