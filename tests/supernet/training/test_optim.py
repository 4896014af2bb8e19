"""LARS and LARC steps computed by hand, LARC against solo-learn's wrapper re-derived per parameter, and
AdamW's decoupled decay on weights only, frozen parameters left out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supernet.training.optim import LARC, LARS, OPTIMIZERS, build_optimizer, parameter_groups


def _step(optimizer_type: type, *, lr: float, weight_decay: float = 0.1, eta: float = 0.02,
          steps: int = 1, exclude: bool = False) -> torch.Tensor:
    """w = (3, 4) (norm 5), g = (0.6, 0.8) (norm 1) at every step."""
    weight = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = optimizer_type([{"params": [weight], "weight_decay": weight_decay, "lars_exclude": exclude}],
                               lr=lr, momentum=0.9, eta=eta)
    for _ in range(steps):
        weight.grad = torch.tensor([0.6, 0.8])
        optimizer.step()
    return weight.detach()


def test_lars_step_by_hand() -> None:
    # u = g + 0.1 w = (0.9, 1.2), |u| = 1.5; trust = 0.02 * 5 / 1.5; step = lr * trust * u
    trust = 0.02 * 5 / 1.5
    torch.testing.assert_close(_step(LARS, lr=0.5), torch.tensor([3 - 0.5 * trust * 0.9, 4 - 0.5 * trust * 1.2]))


def test_larc_step_by_hand_below_and_at_the_clip() -> None:
    local = 0.02 * 5 / (1 + 0.1 * 5 + 1e-8)  # eta |w| / (|g| + wd |w| + eps) = 0.0667
    # lr 0.5: local / lr = 0.133 < 1, so the step is local * (g + wd w)
    torch.testing.assert_close(_step(LARC, lr=0.5), torch.tensor([3 - local * 0.9, 4 - local * 1.2]))
    # lr 0.05: local / lr = 1.33, clipped to 1: a plain SGD step with weight decay
    torch.testing.assert_close(_step(LARC, lr=0.05), torch.tensor([3 - 0.05 * 0.9, 4 - 0.05 * 1.2]))


def test_momentum_accumulates_the_rescaled_updates() -> None:
    # LARC at lr 0.05 clips to plain SGD: buf1 = u, buf2 = 0.9 u' + u' ... with u' recomputed at w1
    weight = _step(LARC, lr=0.05, steps=2)
    w1 = torch.tensor([3 - 0.05 * 0.9, 4 - 0.05 * 1.2])
    u1, u2 = torch.tensor([0.9, 1.2]), torch.tensor([0.6, 0.8]) + 0.1 * w1
    torch.testing.assert_close(weight, w1 - 0.05 * (0.9 * u1 + u2))


@pytest.mark.parametrize("optimizer_type", [LARS, LARC])
def test_excluded_groups_take_plain_sgd_without_decay(optimizer_type: type) -> None:
    torch.testing.assert_close(_step(optimizer_type, lr=0.5, exclude=True), torch.tensor([3 - 0.3, 4 - 0.4]))


def _solo_learn_larc(model: nn.Module, *, lr: float, weight_decay: float, eta: float, steps: int,
                     inputs: torch.Tensor) -> list[torch.Tensor]:
    """solo-learn's ``LARSWrapper(SGD(momentum=0.9, weight_decay=wd), eta, clip=True, exclude_bias_n_norm=True)``
    step, per parameter as its ``update_p`` writes it, around ``torch.optim.SGD`` with decay switched off."""
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    for _ in range(steps):
        sgd.zero_grad()
        model(inputs).square().mean().backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:  # exclude_bias_n_norm
                    continue
                p_norm, g_norm = torch.norm(p), torch.norm(p.grad)
                if p_norm != 0 and g_norm != 0:
                    new_lr = eta * p_norm / (g_norm + p_norm * weight_decay + 1e-8)
                    new_lr = min(new_lr / lr, 1)
                    p.grad += weight_decay * p
                    p.grad *= new_lr
        sgd.step()
    return [p.detach().clone() for p in model.parameters()]


def test_larc_equals_solo_learns_wrapper_over_several_steps() -> None:
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    ours = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    ours.load_state_dict(reference.state_dict())
    inputs = torch.randn(32, 6)
    # lr 2.0 keeps every layer's local rate below the clip, lr 0.001 above it: both branches run
    for lr in (2.0, 0.001):
        expected = _solo_learn_larc(reference, lr=lr, weight_decay=1e-4, eta=0.02, steps=3, inputs=inputs)
        groups = [{"params": [p for p in ours.parameters() if p.ndim > 1], "weight_decay": 1e-4, "lars_exclude": False},
                  {"params": [p for p in ours.parameters() if p.ndim == 1], "weight_decay": 0.0, "lars_exclude": True}]
        optimizer = LARC(groups, lr=lr, momentum=0.9, eta=0.02)
        for _ in range(3):
            optimizer.zero_grad()
            ours(inputs).square().mean().backward()
            optimizer.step()
        for got, want in zip(ours.parameters(), expected):
            torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)


def test_sgd_is_built_with_multi_tensor_kernels_on_cpu() -> None:
    model = nn.Linear(3, 2)
    optimizer = build_optimizer("sgd", parameter_groups(model, weight_decay=1e-4, decay_encoder=True), lr=0.1, momentum=0.9)
    assert optimizer.defaults["foreach"] is True
    with pytest.raises(ValueError, match="sgd, lars, larc, adamw"):
        build_optimizer("adam", [], lr=0.1, momentum=0.9)


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
