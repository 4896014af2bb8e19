"""MoCo v3's contrastive loss (Chen, Xie & He, ICCV 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers"; code facebookresearch/moco-v3, ``moco/builder.py``:
``MoCo.contrastive_loss``).

No queue: a query contrasts with the momentum encoder's keys of the *whole global batch* (gathered
from every data-parallel rank). Row b of a rank's queries has its positive at column
``rank * B + b`` of the gathered keys, the other N - 1 keys being its negatives; the cross-entropy
is multiplied by ``2 * temperature`` (the code's scaling, which keeps the gradient's size about the
same across temperatures). The training loss is symmetric, ``ctr(q1, k2) + ctr(q2, k1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MOCOV3_RESNET_TEMPERATURE = 1.0  # main_moco.py's default (--moco-t), which its ResNet configs keep
MOCOV3_VIT_TEMPERATURE = 0.2  # CONFIG.md's ViT-Small and ViT-Base runs (--moco-t=.2)


def mocov3_cosines(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``normalize(query) @ normalize(keys)^T``: (B, D), (N, D) -> (B, N) cosine similarities."""
    if query.ndim != 2 or keys.ndim != 2 or query.shape[1] != keys.shape[1]:
        raise ValueError(f"query (B, D) and keys (N, D) must share D; got {tuple(query.shape)} and {tuple(keys.shape)}")
    return F.normalize(query.float(), dim=1) @ F.normalize(keys.float(), dim=1).T


def mocov3_loss(query: torch.Tensor, keys: torch.Tensor, *, temperature: float, rank: int = 0) -> torch.Tensor:
    """``CrossEntropy(q @ k^T / T, arange(B) + rank * B) * 2T`` with q, k L2-normalised here.

    Args:
        query: ``(B, D)`` this rank's predictor outputs of one view (with gradient).
        keys: ``(N, D)`` the momentum encoder's projections of another view, gathered from every
            rank in rank order (``N = world_size * B``; ``N = B`` in one process); no gradient.
        temperature: T > 0 (moco-v3: 1.0 for ResNets, 0.2 for ViTs).
        rank: this process's rank; its positives sit at columns ``rank * B ... rank * B + B - 1``.

    Example:
        >>> q = torch.eye(3); round(float(mocov3_loss(q, q, temperature=1.0)), 4)  # 2 * -log(e / (e + 2))
        1.1029
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch = query.shape[0]
    if rank < 0 or (rank + 1) * batch > keys.shape[0]:
        raise ValueError(f"keys hold {keys.shape[0]} rows: too few for rank {rank} with {batch} queries per rank")
    logits = mocov3_cosines(query, keys) / temperature
    labels = torch.arange(batch, device=logits.device) + rank * batch
    return F.cross_entropy(logits, labels) * (2 * temperature)
