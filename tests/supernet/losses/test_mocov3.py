"""MoCo v3's contrastive loss against an independent re-computation of ``moco/builder.py``'s formula,
by hand, and over two data-parallel ranks."""

from __future__ import annotations

import math

import pytest
import torch

from supernet.losses import mocov3_loss


def _builder_contrastive_loss(q: torch.Tensor, k_all: torch.Tensor, temperature: float, rank: int) -> float:
    """``MoCo.contrastive_loss`` written out row by row in float64: q and k normalised, logits
    q . k / T against every gathered key, label ``b + B * rank``, mean cross-entropy, times 2T."""
    q = q.double() / q.double().norm(dim=1, keepdim=True)
    k = k_all.double() / k_all.double().norm(dim=1, keepdim=True)
    total = 0.0
    for b in range(q.shape[0]):
        logits = [float(q[b] @ k[m]) / temperature for m in range(k.shape[0])]
        log_partition = math.log(sum(math.exp(value) for value in logits))
        total += log_partition - logits[b + q.shape[0] * rank]
    return total / q.shape[0] * 2 * temperature


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_matches_builder_formula(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    ours = float(mocov3_loss(q, k, temperature=temperature))
    assert ours == pytest.approx(_builder_contrastive_loss(q, k, temperature, rank=0), rel=1e-5)


def test_by_hand() -> None:
    # orthonormal queries equal to their keys, T = 1: each row is -log(e / (e + B - 1)), times 2
    q = torch.eye(4)
    assert float(mocov3_loss(q, q, temperature=1.0)) == pytest.approx(2 * math.log(1 + 3 / math.e), rel=1e-6)


def test_two_ranks_offset_their_labels_and_average_to_the_whole_batch() -> None:
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(8, 5, generator=generator), torch.randn(8, 5, generator=generator)
    rank_losses = [float(mocov3_loss(q[r * 4:(r + 1) * 4], k, temperature=0.2, rank=r)) for r in (0, 1)]
    assert rank_losses[1] == pytest.approx(_builder_contrastive_loss(q[4:], k, 0.2, rank=1), rel=1e-5)
    # DDP averages the ranks' gradients: the mean of their losses is one process's loss over all 8
    assert sum(rank_losses) / 2 == pytest.approx(float(mocov3_loss(q, k, temperature=0.2)), rel=1e-5)
    # without the offset rank 1 would take rank 0's keys as its positives
    assert float(mocov3_loss(q[4:], k, temperature=0.2, rank=0)) != pytest.approx(rank_losses[1], rel=1e-3)


def test_bad_arguments_name_what_would_be_right() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        mocov3_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="too few for rank 1"):
        mocov3_loss(torch.ones(2, 3), torch.ones(2, 3), temperature=1.0, rank=1)
