"""Optimizers: SGD with momentum, LARS (You et al. 2017) for large batches, or AdamW (Loshchilov &
Hutter 2019), which MoCo v3 and DINO train ViTs with."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio ``eta * ||w|| / (||g|| + wd * ||w||)``.

    Parameter groups with ``lars_exclude=True`` (biases and norm parameters, as in BYOL/SimCLR)
    take plain SGD steps.
    """

    def __init__(
        self,
        params: Iterable,
        *,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = param.norm(), update.norm()
                    if param_norm > 0 and update_norm > 0:
                        update = update.mul(group["eta"] * param_norm / update_norm)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return None


def parameter_groups(module: nn.Module, *, weight_decay: float, decay_encoder: bool) -> list[dict]:
    """Two groups: weights that take weight decay and biases/norm parameters that do not.

    With ``decay_encoder=False`` the encoder's weights get no optimizer weight decay either: US3L's
    group regularization (``supernet.training.group_reg``) replaces it there.
    """
    decayed, plain = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_weight = param.ndim > 1
        in_encoder = name.startswith("encoder.")
        if is_weight and (decay_encoder or not in_encoder):
            decayed.append(param)
        else:
            plain.append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": plain, "weight_decay": 0.0, "lars_exclude": True},
    ]


OPTIMIZERS = ("sgd", "lars", "adamw")


def build_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float,
                    lars_eta: float = 0.001) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS` over the groups of :func:`parameter_groups`."""
    if name == "sgd":
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta)
    if name == "adamw":
        # betas (0.9, 0.999), eps 1e-8: torch's defaults, as moco-v3's main_moco.py keeps them;
        # ``momentum`` has no role here. Decoupled weight decay per group (0 for biases and norms).
        for group in groups:
            group.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
