"""Linear probe on frozen features: multinomial logistic regression, the standard SSL evaluation.

The protocol of SimCLR / BYOL / DINO's linear evaluation, reduced to what fits in memory: features
are computed once (no augmentation), standardised with the training split's per-dimension mean and
standard deviation (a BatchNorm without affine parameters in front of the head, as in MAE's probe;
it changes the conditioning, not what a linear head can express), and a linear head is fitted by
full-batch L-BFGS on the cross-entropy plus an L2 penalty on its weights. No randomness other than
the head's initialisation, which ``seed`` fixes, so the result is a function of the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LinearHead:
    """A fitted logistic-regression head: standardisation by the training features' ``mean`` and ``std``
    (D,), then ``weight`` (C, D) and ``bias`` (C,); float64."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits (N, C) of features (N, D), float64."""
        standardised = (features.detach().to(self.mean) - self.mean) / self.std
        return standardised @ self.weight.T + self.bias


def fit_linear_head(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> LinearHead:
    """A logistic-regression head fitted by full-batch L-BFGS on features (N, D) and labels (N,) in
    [0, num_classes), on the features' device.

    ``epochs``: L-BFGS iterations (each one pass over the features, plus line-search evaluations);
    ``lr``: L-BFGS step scale (1.0 with the strong-Wolfe line search); ``weight_decay``: coefficient of
    ``0.5 * ||W||^2`` added to the mean cross-entropy; ``seed``: the head's initialisation.
    """
    _check(train_features, train_labels, "train")
    if num_classes < 2:
        raise ValueError(f"linear_probe: num_classes={num_classes}; expected at least 2")
    if epochs < 1:
        raise ValueError(f"linear_probe: epochs={epochs}; expected a positive number of L-BFGS iterations")
    labels = train_labels.long().to(train_features.device)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"linear_probe: train labels span [{int(labels.min())}, {int(labels.max())}]; "
                         f"expected [0, {num_classes})")
    train = train_features.detach().double()
    mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False).clamp_min(1e-6)
    train = (train - mean) / std
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, train.shape[1], generator=generator, dtype=torch.float64) * 0.01)
    weight = weight.to(train.device).requires_grad_()
    bias = torch.zeros(num_classes, dtype=torch.float64, device=train.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=epochs, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight.T + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearHead(mean, std, weight.detach(), bias.detach())


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 accuracy in [0, 1] on the test split of a logistic-regression head fitted on the train split.

    ``train_features``: (N, D), ``train_labels``: (N,) in [0, num_classes); likewise (M, D), (M,) for
    the test split. The head and its settings: :func:`fit_linear_head`. A tie between classes goes to
    the lower class index.

    >>> features = torch.randn(200, 8); labels = (features[:, 0] > 0).long()
    >>> linear_probe(features[:100], labels[:100], features[100:], labels[100:], num_classes=2) > 0.9
    True
    """
    _check(test_features, test_labels, "test")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"linear_probe: train features have {train_features.shape[1]} dimensions, "
                         f"test features {test_features.shape[1]}; expected the same")
    head = fit_linear_head(train_features, train_labels, num_classes=num_classes, epochs=epochs, lr=lr,
                           weight_decay=weight_decay, seed=seed)
    with torch.no_grad():
        predicted = head.logits(test_features).argmax(dim=1).cpu()
    return float((predicted == test_labels.long().cpu()).double().mean())


def _check(features: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0] or features.shape[0] == 0:
        raise ValueError(f"linear_probe: {split} split has features {tuple(features.shape)} and labels "
                         f"{tuple(labels.shape)}; expected (N, D) and (N,) with N > 0")
