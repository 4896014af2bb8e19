"""Optimizers over the parameter groups: AdamW's decoupled decay on weights only, frozen parameters left out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supernet.training.optim import OPTIMIZERS, build_optimizer, parameter_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[2].requires_grad_(False)  # a frozen layer, as MoCo v3's patch projection
    return model


def test_adamw_decays_weights_decoupled_and_spares_biases_norms_and_frozen_layers() -> None:
    model = _model()
    optimizer = build_optimizer("adamw", parameter_groups(model, weight_decay=0.1, decay_encoder=True), lr=0.01, momentum=0.9)
    assert isinstance(optimizer, torch.optim.AdamW) and "adamw" in OPTIMIZERS
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # Adam's own step is 0: only the decoupled decay moves a weight
    optimizer.step()
    params = dict(model.named_parameters())
    torch.testing.assert_close(params["0.weight"], before["0.weight"] * (1 - 0.01 * 0.1))
    for name in ("0.bias", "1.weight", "1.bias", "2.weight", "2.bias"):
        assert torch.equal(params[name], before[name]), name


def test_unknown_optimizer_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="sgd, lars, adamw"):
        build_optimizer("adam", parameter_groups(_model(), weight_decay=0.0, decay_encoder=True), lr=0.1, momentum=0.9)
