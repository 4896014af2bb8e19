"""VICReg's three terms, each by hand, and the weighted loss against lightly's VICRegLoss."""

from __future__ import annotations

import math

import pytest
import torch

from supernet.losses import (
    vicreg_covariance,
    vicreg_invariance,
    vicreg_loss,
    vicreg_variance,
)

Z_A = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, -2.0]])
Z_B = torch.tensor([[0.0, 2.0, 1.0], [2.0, 1.0, 1.0], [-1.0, 0.0, 0.0], [1.0, 3.0, -1.0]])


def _columns(z: torch.Tensor) -> list[list[float]]:
    return [list(column) for column in zip(*z.tolist())]


def _variance(values: list[float]) -> float:  # unbiased, as torch.var
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def test_invariance_is_the_mean_squared_error_over_every_entry() -> None:
    squares = [(a - b) ** 2 for row_a, row_b in zip(Z_A.tolist(), Z_B.tolist()) for a, b in zip(row_a, row_b)]
    assert float(vicreg_invariance(Z_A, Z_B)) == pytest.approx(sum(squares) / len(squares))
    assert float(vicreg_invariance(Z_A, Z_A)) == 0.0


def test_variance_is_a_hinge_on_each_dimensions_std() -> None:
    stds = [math.sqrt(_variance(column) + 1e-4) for column in _columns(Z_A * 0.3)]
    expected = sum(max(0.0, 1.0 - std) for std in stds) / len(stds)
    assert float(vicreg_variance(Z_A * 0.3)) == pytest.approx(expected, rel=1e-6)
    assert 0 < expected  # some dimensions below std 1 here ...
    assert float(vicreg_variance(Z_A * 10)) == 0.0  # ... none once every std is above it


def test_covariance_sums_squared_off_diagonal_covariances_over_the_dimension() -> None:
    columns = _columns(Z_A)
    means = [sum(c) / len(c) for c in columns]
    n, d = len(columns[0]), len(columns)
    total = 0.0
    for k in range(d):
        for j in range(d):
            if k != j:
                cov = sum((columns[k][b] - means[k]) * (columns[j][b] - means[j]) for b in range(n)) / (n - 1)
                total += cov**2
    assert float(vicreg_covariance(Z_A)) == pytest.approx(total / d, rel=1e-6)
    decorrelated = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(vicreg_covariance(decorrelated)) == 0.0


def test_weighted_loss_composes_the_terms() -> None:
    expected = (25 * vicreg_invariance(Z_A, Z_B) + 25 * (vicreg_variance(Z_A) + vicreg_variance(Z_B)) / 2
                + 1 * (vicreg_covariance(Z_A) + vicreg_covariance(Z_B)))
    torch.testing.assert_close(vicreg_loss(Z_A, Z_B), expected)
    only_invariance = vicreg_loss(Z_A, Z_B, invariance_weight=1.0, variance_weight=0.0, covariance_weight=0.0)
    torch.testing.assert_close(only_invariance, vicreg_invariance(Z_A, Z_B))


def test_matches_lightly() -> None:
    import lightly.loss as lightly_loss  # the reference (the test extra installs it)
    generator = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 3.0):
        z_a, z_b = scale * torch.randn(16, 8, generator=generator), scale * torch.randn(16, 8, generator=generator)
        theirs = lightly_loss.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0)(z_a, z_b)
        assert float(vicreg_loss(z_a, z_b)) == pytest.approx(float(theirs), rel=1e-5)


def test_rejects_a_single_row() -> None:
    with pytest.raises(ValueError, match="B >= 2"):
        vicreg_variance(torch.ones(1, 3))
