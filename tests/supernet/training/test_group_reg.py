"""US3L group regularisation: bins, coefficients, and the gradient of US3L's own regulariser."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supernet.nn.models import build_supernet
from supernet.training.group_reg import (
    GroupDecay,
    apply_group_decay,
    channel_bins,
    group_coefficients,
)


def test_channel_bins_closed_forms() -> None:
    assert channel_bins(64, 8).tolist() == [c // 8 for c in range(64)]
    assert channel_bins(10, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3]  # the last bin takes the remainder
    assert channel_bins(4, 8).tolist() == [7, 7, 7, 7]  # fewer channels than bins: all in the last


def test_group_coefficients_c64() -> None:
    coefficients = group_coefficients(64, base=1e-4, alpha=0.05, groups=8)
    for group in range(8):
        block = coefficients[group * 8 : (group + 1) * 8]
        assert torch.allclose(block, torch.full((8,), 1e-4 * (1 - 0.05 * group)), rtol=1e-6, atol=0)


def test_alpha_zero_is_plain_weight_decay_and_negative_coefficients_are_refused() -> None:
    assert torch.allclose(group_coefficients(16, 5e-4, 0.0), torch.full((16,), 5e-4))
    with pytest.raises(ValueError, match="alpha"):
        group_coefficients(16, 1e-4, 0.5, groups=8)


def _us3l_regulariser(model: nn.Module, reg_lambda: float, alpha: float, bins: int, *, vit: bool) -> torch.Tensor:
    """US3L's regulariser as its code writes it, re-derived here independently of ``group_reg``: a float64
    mask per parameter filled bin by bin with slices (``losses/regularizers/GroupReg.py`` for CNNs,
    ``GroupRegularizer`` in ``ViT_experiments/main_moco_ofa_ddp.py`` for ViTs), loss
    ``sum(mask * p^2)``. ``alpha`` is the already-ramped decay."""
    loss = torch.zeros((), dtype=torch.float64)
    for param in model.parameters():
        mask = torch.full(param.shape, reg_lambda, dtype=torch.float64)
        binned_dim = (1 if param.ndim == 2 else None) if vit else (0 if param.ndim in (1, 4) else None)
        if binned_dim is not None:
            size = param.shape[binned_dim]
            width = size // bins
            for i in range(bins):
                end = size if i == bins - 1 else (i + 1) * width
                index = [slice(None)] * param.ndim
                index[binned_dim] = slice(i * width, end)
                mask[tuple(index)] = reg_lambda * (1 - alpha * i)
        loss = loss + (mask * param.double().square()).sum()
    return loss


@pytest.mark.parametrize("space", ["tiny", "vit_test"])
def test_group_decay_adds_the_gradient_of_us3ls_regulariser(space: str) -> None:
    torch.manual_seed(0)
    encoder = build_supernet(space)
    with torch.no_grad():
        for param in encoder.parameters():
            param.add_(torch.randn_like(param) * 0.1)  # no all-ones BN weights or zero biases left
    base, alpha = 2e-3, 0.05  # base = 2 * lambda: US3L adds lambda * w^2 to the loss
    vit = encoder.space.family == "vit"

    _us3l_regulariser(encoder, base / 2, alpha, 8, vit=vit).backward()
    expected = [p.grad.clone() for p in encoder.parameters()]
    for param in encoder.parameters():
        param.grad = torch.zeros_like(param)
    GroupDecay(encoder, groups=8, family=encoder.space.family).apply(base, alpha)
    binned = 0
    for (name, param), reference in zip(encoder.named_parameters(), expected):
        torch.testing.assert_close(param.grad, reference.float(), rtol=1e-5, atol=1e-9, msg=name)
        binned += int(len(torch.unique(param.grad / param.detach().where(param != 0, 1.0))) > 1)
    assert binned > 5, "no parameter had more than one coefficient: the bins were not exercised"


def test_penalty_gradient_is_what_apply_adds_and_parameters_without_gradient_are_skipped() -> None:
    torch.manual_seed(0)
    encoder = build_supernet("tiny")
    decay = GroupDecay(encoder, groups=8)
    decay.penalty(1e-2, 0.1).backward()
    from_penalty = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad(set_to_none=True)
    first = next(encoder.parameters())
    first.grad = torch.zeros_like(first)  # only this one has a gradient this step
    decay.apply(1e-2, 0.1)
    torch.testing.assert_close(first.grad, from_penalty[0])
    assert all(p.grad is None for p in list(encoder.parameters())[1:])


def test_apply_group_decay_closed_form() -> None:
    layer = nn.Conv2d(3, 8, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(2.0)
    layer.weight.grad = torch.zeros_like(layer.weight)
    apply_group_decay(layer, base=0.1, alpha=0.1, groups=4)
    per_row = torch.tensor([0.2, 0.2, 0.18, 0.18, 0.16, 0.16, 0.14, 0.14])
    assert torch.allclose(layer.weight.grad, per_row.view(8, 1, 1, 1).expand(8, 3, 1, 1), atol=1e-7)
