"""SimCLR's NT-Xent and SimSiam's negative cosine against lightly's implementations."""

from __future__ import annotations

import lightly.loss as lightly_loss  # the reference: in the test extra, so these never skip
import pytest
import torch

from supernet.losses import negative_cosine, nt_xent


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
