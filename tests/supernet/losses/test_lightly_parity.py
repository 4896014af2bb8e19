"""SimCLR's NT-Xent, SimSiam's negative cosine and SwAV's Sinkhorn and loss against lightly's
implementations; MoCo v3's loss has no lightly counterpart (the last test says why)."""

from __future__ import annotations

import lightly.loss as lightly_loss  # the reference: in the test extra, so these never skip
import pytest
import torch

from supernet.losses import mocov3_loss, negative_cosine, nt_xent, sinkhorn, swav_loss


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
    theirs = lightly_loss.NTXentLoss(temperature=temperature)(a, b)
    assert float(nt_xent(a, b, temperature)) == pytest.approx(float(theirs), rel=1e-5)


def test_nt_xent_gradient_matches_lightly_on_both_sides() -> None:
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    ours_a, ours_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    theirs_a, theirs_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    nt_xent(ours_a, ours_b, 0.5).backward()
    lightly_loss.NTXentLoss(temperature=0.5)(theirs_a, theirs_b).backward()
    torch.testing.assert_close(ours_a.grad, theirs_a.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours_b.grad, theirs_b.grad, rtol=1e-4, atol=1e-6)


def test_negative_cosine_matches_lightly_and_simsiams_symmetric_loss() -> None:
    generator = torch.Generator().manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(5, 12, generator=generator) for _ in range(4))
    criterion = lightly_loss.NegativeCosineSimilarity()
    assert float(negative_cosine(p1, z2)) == pytest.approx(float(criterion(p1, z2)), rel=1e-5)
    # SimSiam (Chen & He 2021, Algorithm 1): L = D(p1, z2) / 2 + D(p2, z1) / 2
    ours = 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
    theirs = 0.5 * (criterion(p1, z2) + criterion(p2, z1))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def _swav_scores(*shape: int, seed: int) -> torch.Tensor:
    """Cosines of unit embeddings to unit prototypes, SwAV's scores."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(shape[0], 16, generator=generator), dim=1)
    prototypes = torch.nn.functional.normalize(torch.randn(shape[1], 16, generator=generator), dim=1)
    return z @ prototypes.T


@pytest.mark.parametrize(("samples", "prototypes", "iterations"), [(16, 10, 3), (64, 30, 3), (8, 40, 7)])
def test_sinkhorn_matches_lightly(samples: int, prototypes: int, iterations: int) -> None:
    # lightly drops SwAV's "/ K" after the row sums: a common factor the column step divides out
    scores = _swav_scores(samples, prototypes, seed=samples)
    theirs = lightly_loss.swav_loss.sinkhorn(scores.clone(), iterations=iterations, epsilon=0.05)
    torch.testing.assert_close(sinkhorn(scores, iterations=iterations, epsilon=0.05), theirs, atol=1e-5, rtol=1e-5)


def _our_swav(high: list[torch.Tensor], low: list[torch.Tensor], queue: list[torch.Tensor] | None) -> torch.Tensor:
    """SwAV's multi-crop loss from our pure functions: codes of each high-resolution view (its queue
    rows joining Sinkhorn, their codes dropped), predicted by every other view, all pairs equally weighted."""
    views = [*high, *low]
    terms = []
    for i, scores in enumerate(high):
        pool = scores if queue is None else torch.cat([queue[i], scores])
        codes = sinkhorn(pool)[-scores.shape[0]:]
        terms += [swav_loss(views[v], codes, temperature=0.1) for v in range(len(views)) if v != i]
    return torch.stack(terms).mean()


@pytest.mark.parametrize(("num_low", "with_queue"), [(0, False), (4, False), (2, True)])
def test_swav_loss_matches_lightly(num_low: int, with_queue: bool) -> None:
    high = [_swav_scores(12, 20, seed=10 + i) for i in range(2)]
    low = [_swav_scores(12, 20, seed=20 + i) for i in range(num_low)]
    queue = [_swav_scores(36, 20, seed=30 + i) for i in range(2)] if with_queue else None
    theirs = lightly_loss.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)(high, low, queue)
    assert float(_our_swav(high, low, queue)) == pytest.approx(float(theirs), rel=1e-5)


def test_lightlys_ntxent_is_not_mocov3s_loss() -> None:
    """MoCo v3 contrasts each query with the B keys only (B-way); lightly's NTXentLoss without a
    memory bank contrasts each of the 2B embeddings with the other 2B - 1 (both views as negatives),
    and with a memory bank against a fixed bank. No temperature or scaling makes them agree."""
    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
    ntxent = float(lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=0)(q, k))
    ours = float(mocov3_loss(q, k, temperature=0.2))
    assert abs(ours / 0.4 - ntxent) > 0.1  # ours without its 2T factor: still another loss
