"""Linear probe on frozen features: it learns what is linearly there and nothing that is not."""

from __future__ import annotations

import pytest
import torch

from supernet.evaluation import linear_probe


def clusters(num_classes: int, per_class: int, dim: int, *, seed: int, spread: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Isotropic Gaussian clusters (standard deviation ``spread``) around centres drawn from N(0, 4 I)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(num_classes, dim, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=generator)
    order = torch.randperm(labels.shape[0], generator=generator)
    return features[order], labels[order]


def split(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    half = features.shape[0] // 2
    return features[:half], labels[:half], features[half:], labels[half:]


def test_separable_features_are_classified() -> None:
    train_x, train_y, test_x, test_y = split(*clusters(5, 80, 16, seed=0))
    assert linear_probe(train_x, train_y, test_x, test_y, num_classes=5, epochs=50) > 0.95


def test_random_labels_give_chance() -> None:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1000, 32, generator=generator)
    labels = torch.randint(0, 10, (1000,), generator=generator)
    accuracy = linear_probe(*split(features, labels), num_classes=10, epochs=50)
    assert 0.03 <= accuracy <= 0.18  # chance is 0.10; 500 test images put 0.18 seven standard errors away


def test_not_linearly_separable_stays_below_separable() -> None:
    # XOR of two signs: no linear head does better than about chance (0.5)
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(800, 2, generator=generator)
    labels = ((features[:, 0] > 0) ^ (features[:, 1] > 0)).long()
    assert linear_probe(*split(features, labels), num_classes=2, epochs=50) < 0.65


def test_deterministic_for_a_seed_and_invariant_to_feature_scale() -> None:
    train_x, train_y, test_x, test_y = split(*clusters(4, 50, 8, seed=3, spread=3.0))  # overlapping: not 100%
    first = linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=30, seed=7)
    assert linear_probe(train_x, train_y, test_x, test_y, num_classes=4, epochs=30, seed=7) == first
    assert 0.4 < first < 0.95
    # features are standardised with the training split's statistics: a rescaled and shifted copy of
    # the features is the same problem
    scaled = linear_probe(train_x * 1000 + 5, train_y, test_x * 1000 + 5, test_y, num_classes=4, epochs=30, seed=7)
    assert abs(scaled - first) <= 0.02


def test_rejects_mismatched_inputs() -> None:
    features, labels = torch.randn(10, 4), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="dimensions"):
        linear_probe(features, labels, torch.randn(5, 3), labels[:5], num_classes=3)
    with pytest.raises(ValueError, match="expected \\(N, D\\) and \\(N,\\)"):
        linear_probe(features, labels[:9], features, labels, num_classes=3)
    with pytest.raises(ValueError, match="expected \\[0, 2\\)"):
        linear_probe(features, torch.full((10,), 2), features, labels, num_classes=2)
