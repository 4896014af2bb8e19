"""SwAV's online codes and swapped prediction (Caron et al., NeurIPS 2020, "Unsupervised Learning of
Visual Features by Contrasting Cluster Assignments"; code facebookresearch/swav, ``main_swav.py``).

The scores of a batch against K prototypes are turned into *codes* by a few Sinkhorn-Knopp
iterations (``distributed_sinkhorn``): the codes of each sample sum to 1, and every prototype
receives about the same share of the batch (the equipartition constraint, which rules out the
trivial solution of one cluster for everything). Each view then predicts, through a softmax at
temperature 0.1, the codes computed from another view of the same image (``train``: the loss over
``crops_for_assign``). Codes are computed without gradient, in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SWAV_TEMPERATURE = 0.1
SINKHORN_EPSILON = 0.05
SINKHORN_ITERATIONS = 3


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, *, iterations: int = SINKHORN_ITERATIONS, epsilon: float = SINKHORN_EPSILON) -> torch.Tensor:
    """SwAV's codes of N samples over K prototypes: ``main_swav.py``'s ``distributed_sinkhorn``.

    ``Q = exp(scores / epsilon)^T`` (K, N), scaled to sum to 1; then ``iterations`` times: every
    row (prototype) scaled to total 1/K, every column (sample) to 1/N; finally multiplied by N.
    Pass every sample the codes must balance over (all ranks' batches, the queue): the
    normalisations sum over all of them.

    The maximum score is subtracted before ``exp``: the first normalisation divides any common
    factor out, so the codes are the same, and ``exp`` cannot overflow (scores far above SwAV's
    cosines, or offset by a constant). Scores spanning more than ~100 epsilon still underflow, as
    in SwAV; its cosines span at most 2.

    Args:
        scores: ``(N, K)`` similarities of N embeddings to K prototypes (cosines in SwAV).
        iterations: Sinkhorn-Knopp iterations (3 in SwAV).
        epsilon: entropic regularisation (0.05 in SwAV); smaller gives sharper codes.

    Returns:
        ``(N, K)`` float32 codes, detached: each row sums to 1 (up to rounding), and each column
        sums to about N / K (exactly only as ``iterations`` grows).

    Example:
        >>> codes = sinkhorn(torch.tensor([[1.0, 0.0], [0.9, 0.1]]), iterations=3, epsilon=0.5)
        >>> codes.sum(dim=1)
        tensor([1., 1.])
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (N, K) with N, K >= 1; got {tuple(scores.shape)}")
    scores = scores.detach().float()
    q = torch.exp((scores - scores.max()) / epsilon).T  # (K, N), SwAV's notation
    num_prototypes, num_samples = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)
        q /= num_samples
    return (q * num_samples).T


def swav_loss(scores: torch.Tensor, codes: torch.Tensor, temperature: float = SWAV_TEMPERATURE) -> torch.Tensor:
    """Swapped prediction for one (predicting view, coding view) pair: ``-mean_b sum_k q_bk log p_bk``.

    ``p = softmax(scores / temperature)`` of the predicting view; ``q`` the codes of another view
    of the same images (detached here).

    Args:
        scores: ``(B, K)`` prototype scores of the predicting view (with gradient).
        codes: ``(B, K)`` :func:`sinkhorn` codes of the coding view.
        temperature: softmax temperature > 0 (0.1 in SwAV).

    Example:
        >>> scores = torch.tensor([[1.0, 0.0]]); codes = torch.tensor([[1.0, 0.0]])
        >>> round(float(swav_loss(scores, codes, temperature=1.0)), 4)  # -log(e / (e + 1))
        0.3133
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if scores.ndim != 2 or scores.shape != codes.shape:
        raise ValueError(f"scores and codes must both be (B, K) with the same shape; got {tuple(scores.shape)} "
                         f"and {tuple(codes.shape)}")
    log_probs = F.log_softmax(scores.float() / temperature, dim=1)
    return -(codes.detach().float() * log_probs).sum(dim=1).mean()
