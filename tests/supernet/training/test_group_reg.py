from __future__ import annotations

import pytest
import torch
from torch import nn

from supernet.nn.ops import DynamicBatchNorm2d, DynamicConv2d
from supernet.training.group_reg import (
    apply_group_decay,
    group_coefficients,
    group_decay_penalty,
)


def test_group_coefficients_c64() -> None:
    coefficients = group_coefficients(64, base=1e-4, alpha=0.05, groups=8)
    assert coefficients.shape == (64,)
    for group in range(8):
        block = coefficients[group * 8 : (group + 1) * 8]
        expected = torch.full((8,), 1e-4 * (1 - 0.05 * group))
        assert torch.allclose(block, expected, rtol=1e-6, atol=0)
    values, counts = torch.unique(coefficients, return_counts=True)
    assert len(values) == 8 and counts.tolist() == [8] * 8


def test_group_coefficients_uneven_channels_cover_every_channel() -> None:
    base, alpha = 1.0, 0.1
    coefficients = group_coefficients(20, base, alpha, groups=8)
    groups = torch.round((1 - coefficients / base) / alpha).long()
    assert groups.shape == (20,)
    assert groups.min().item() == 0 and groups.max().item() == 7
    assert set(groups.tolist()) == set(range(8))
    assert torch.all(groups[1:] >= groups[:-1])  # contiguous, first channels in group 0
    assert groups.tolist() == [c * 8 // 20 for c in range(20)]


def test_group_coefficients_alpha_zero_is_plain_weight_decay() -> None:
    assert torch.allclose(group_coefficients(16, 5e-4, 0.0), torch.full((16,), 5e-4))
    with pytest.raises(ValueError, match="alpha"):
        group_coefficients(16, 1e-4, 0.5, groups=8)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=True),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        DynamicConv2d(16, 20, 3, padding=1),
        DynamicBatchNorm2d(20),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(20, 12),
        nn.BatchNorm1d(12, affine=False),
    )


def test_apply_group_decay_adds_exactly_the_penalty_gradient() -> None:
    torch.manual_seed(0)
    model = _model()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)  # not all ones, so a wrong coefficient shows
    x = torch.randn(4, 3, 8, 8)
    base, alpha = 1e-2, 0.1

    model.zero_grad()
    model(x).square().mean().backward()
    loss_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    apply_group_decay(model, base, alpha)
    decayed = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    group_decay_penalty(model, base, alpha).backward()
    penalty_grads = {name: p.grad for name, p in model.named_parameters()}

    for name, grad in decayed.items():
        penalty = penalty_grads[name] if penalty_grads[name] is not None else torch.zeros_like(grad)
        assert torch.allclose(grad - loss_grads[name], penalty, atol=1e-9), name
        if name.endswith("bias"):
            assert torch.equal(grad, loss_grads[name]), f"{name}: biases must not be decayed"
        else:
            assert not torch.equal(grad, loss_grads[name]), f"{name}: weight was not decayed"


def test_apply_group_decay_closed_form_and_skips_missing_grads() -> None:
    layer = nn.Linear(3, 8, bias=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    apply_group_decay(layer, base=0.1, alpha=0.1, groups=4)  # grad is None: nothing happens
    assert layer.weight.grad is None
    layer.weight.grad = torch.zeros_like(layer.weight)
    apply_group_decay(layer, base=0.1, alpha=0.1, groups=4)
    per_row = torch.tensor([0.2, 0.2, 0.18, 0.18, 0.16, 0.16, 0.14, 0.14])
    assert torch.allclose(layer.weight.grad, per_row[:, None].expand(8, 3), atol=1e-7)


def test_group_decay_penalty_closed_form() -> None:
    layer = nn.Conv2d(1, 4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(4, 1, 1, 1))
    coefficients = [1.0, 1.0, 0.5, 0.5]  # base 1, alpha 0.5, two groups
    expected = 0.5 * sum(c * w**2 for c, w in zip(coefficients, [1.0, 2.0, 3.0, 4.0]))
    assert group_decay_penalty(layer, 1.0, 0.5, groups=2).item() == pytest.approx(expected)
