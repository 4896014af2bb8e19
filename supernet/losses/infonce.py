"""InfoNCE for momentum-contrast methods (MoCo v2: He et al., CVPR 2020; Chen et al., 2020).

Two layouts of the logits exist and the positive sits in a different place in each:

* with a queue of negatives: ``(B, 1 + K)``, the positive is column 0 for every row
  (``info_nce(logits)`` with the default ``positive_index``);
* without a queue (in-batch negatives): ``(B, B)``, the positive of row ``b`` is column ``b``,
  i.e. the diagonal (``info_nce(logits, torch.arange(B))``).

``info_nce`` never guesses the layout from the shape, because a ``(B, 1 + K)`` matrix with
``K = B - 1`` is square too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12


def contrastive_logits(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Cosine-similarity logits divided by ``temperature``.

    ``query``, ``key`` and ``queue`` are L2-normalised here along the feature dimension (a no-op for
    vectors that already are), so callers may pass raw projections.

    Args:
        query: ``(B, D)`` online-network projections of one view.
        key: ``(B, D)`` momentum-encoder projections of the other view; detach before the call.
        queue: ``(K, D)`` negatives from earlier batches, or ``None`` for in-batch negatives.
        temperature: the softmax temperature tau > 0 (MoCo v2 uses 0.2).

    Returns:
        With a queue: ``(B, 1 + K)``; column 0 is ``q_b . k_b``, columns 1.. are ``q_b . queue_j``.
        Without: ``(B, B)`` with entry ``(b, j) = q_b . k_j``; positives on the diagonal.

    Example:
        >>> q = torch.randn(4, 8); k = torch.randn(4, 8); queue = torch.randn(16, 8)
        >>> contrastive_logits(q, k, queue, 0.2).shape
        torch.Size([4, 17])
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query.ndim != 2 or query.shape != key.shape:
        raise ValueError(
            f"query and key must both be (B, D) with the same shape; got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    query = F.normalize(query, dim=1, eps=_EPS)
    key = F.normalize(key, dim=1, eps=_EPS)
    if queue is None:
        return query @ key.T / temperature
    if queue.ndim != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(f"queue must be (K, D={query.shape[1]}); got {tuple(queue.shape)}")
    queue = F.normalize(queue, dim=1, eps=_EPS)
    positive = (query * key).sum(dim=1, keepdim=True)
    negatives = query @ queue.T
    return torch.cat([positive, negatives], dim=1) / temperature


def info_nce(logits: torch.Tensor, positive_index: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: mean cross-entropy of each row of ``logits`` toward its positive column.

    Args:
        logits: ``(B, N)`` temperature-scaled logits, e.g. from :func:`contrastive_logits`.
        positive_index: ``(B,)`` integer column of each row's positive. ``None`` means column 0, the
            queue layout; for in-batch logits pass ``torch.arange(B)``.

    Returns:
        A scalar tensor.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, N); got {tuple(logits.shape)}")
    if positive_index is None:
        positive_index = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    elif positive_index.shape != (logits.shape[0],):
        raise ValueError(f"positive_index must be ({logits.shape[0]},); got {tuple(positive_index.shape)}")
    return F.cross_entropy(logits, positive_index.long())
