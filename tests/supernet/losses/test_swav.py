"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss: hand-computed values, the equipartition
constraint, and the data-parallel algorithm of ``main_swav.py`` (``distributed_sinkhorn``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from supernet.losses import sinkhorn, swav_loss


def _cosines(samples: int, prototypes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(samples, 16, generator=generator), dim=1)
    c = F.normalize(torch.randn(prototypes, 16, generator=generator), dim=1)
    return z @ c.T


def test_one_iteration_by_hand() -> None:
    # exp(scores)^T = [[3, 1], [1, 1]] (K x N), / 6; rows -> 1/2 each ([[.375, .125], [.25, .25]]);
    # columns -> 1/2 each ([[.3, 1/6], [.2, 1/3]]); times N = 2, transposed.
    scores = torch.tensor([[torch.log(torch.tensor(3.0)), 0.0], [0.0, 0.0]])
    codes = sinkhorn(scores, iterations=1, epsilon=1.0)
    torch.testing.assert_close(codes, torch.tensor([[0.6, 0.4], [1 / 3, 2 / 3]]))


def test_codes_are_doubly_stochastic() -> None:
    """What is checked, in the returned (N, K) codes (SwAV's Q^T times N): each sample's codes sum to
    1 (the last step of every iteration normalises samples, so this holds to rounding after any number
    of iterations), and each prototype's codes sum over the N samples to N / K (the equipartition
    constraint: in SwAV's K x N matrix before the final x N, rows sum to 1/K and columns to 1/N).
    The prototype sums only converge: within 1e-3 of N / K (relative) after enough iterations, and
    closer with every iteration."""
    scores = _cosines(256, 20)
    samples, prototypes = scores.shape
    errors = []
    for iterations in (1, 3, 10, 30, 300):
        codes = sinkhorn(scores, iterations=iterations, epsilon=0.05)
        assert codes.dtype == torch.float32 and bool((codes >= 0).all())
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(samples), atol=1e-5, rtol=0)
        errors.append(float((codes.sum(dim=0) / (samples / prototypes) - 1).abs().max()))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors
    assert errors[0] > 1e-2  # one iteration is far from balanced: the check above is not vacuous


def test_a_common_offset_changes_nothing_even_where_exp_would_overflow() -> None:
    scores = _cosines(32, 8)
    codes = sinkhorn(scores)
    torch.testing.assert_close(sinkhorn(scores + 7.0), codes)
    assert not bool(torch.isfinite(torch.exp((scores + 100.0) / 0.05)).all())  # SwAV's exp would overflow here
    # within float32's rounding of scores near 100 (an ulp of 8e-6, times 1 / epsilon inside exp)
    torch.testing.assert_close(sinkhorn(scores + 100.0), codes, rtol=1e-3, atol=1e-6)


def _swav_distributed_sinkhorn(ranks: list[torch.Tensor], iterations: int, epsilon: float) -> list[torch.Tensor]:
    """``main_swav.py``'s ``distributed_sinkhorn`` run by hand on each rank's scores, with every
    ``dist.all_reduce`` replaced by the sum of that quantity over the ranks."""
    qs = [torch.exp(scores / epsilon).t() for scores in ranks]
    total_samples = sum(q.shape[1] for q in qs)
    prototypes = qs[0].shape[0]
    total = sum(torch.sum(q) for q in qs)
    qs = [q / total for q in qs]
    for _ in range(iterations):
        row_sums = sum(torch.sum(q, dim=1, keepdim=True) for q in qs)
        qs = [q / row_sums / prototypes for q in qs]
        qs = [q / torch.sum(q, dim=0, keepdim=True) / total_samples for q in qs]
    return [(q * total_samples).t() for q in qs]


def test_over_two_ranks_equals_one_sinkhorn_over_the_concatenated_batch() -> None:
    rank0, rank1 = _cosines(24, 12, seed=1), _cosines(24, 12, seed=2)
    together = sinkhorn(torch.cat([rank0, rank1]), iterations=3, epsilon=0.05)
    per_rank = _swav_distributed_sinkhorn([rank0.double(), rank1.double()], iterations=3, epsilon=0.05)
    torch.testing.assert_close(together[:24], per_rank[0].float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(together[24:], per_rank[1].float(), atol=1e-6, rtol=1e-5)
    # and the ranks' codes are not what each rank would get alone
    assert not torch.allclose(together[:24], sinkhorn(rank0), atol=1e-3)


def test_swapped_prediction_by_hand() -> None:
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    codes = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    loss = swav_loss(scores, codes, temperature=0.5)  # logits 4, 0, 0 and 0, 2, 0
    row0 = -(0.5 * (4 - torch.log(torch.tensor(torch.e**4 + 2))) + 0.5 * (0 - torch.log(torch.tensor(torch.e**4 + 2))))
    row1 = -(0 - torch.log(torch.tensor(torch.e**2 + 2)))
    assert float(loss.detach()) == pytest.approx(float((row0 + row1) / 2), rel=1e-6)
    loss.backward()
    assert scores.grad is not None and bool(scores.grad.abs().sum() > 0)


def test_bad_arguments_name_what_would_be_right() -> None:
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sinkhorn(torch.zeros(2, 2), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        sinkhorn(torch.zeros(2, 2), iterations=0)
    with pytest.raises(ValueError, match="same shape"):
        swav_loss(torch.zeros(2, 3), torch.zeros(2, 4))
