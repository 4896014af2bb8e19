"""Optimizers: SGD with momentum, LARS (You et al. 2017) as BYOL and DINO use it, LARC, the clipped
LARS of solo-learn that Krishna et al. train with, and AdamW (Loshchilov & Hutter 2019), which MoCo v3
and DINO train ViTs with.

Both layer-wise optimizers update every parameter of a group with ``torch._foreach_*`` kernels and
decide the trust ratio on the device (``torch.where``), so a step never waits for the host.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["LARC", "LARS", "OPTIMIZERS", "build_optimizer", "parameter_groups"]


class _LayerwiseSGD(torch.optim.Optimizer):
    """SGD with momentum whose update of each parameter is first rescaled by :meth:`_rescale`.

    Parameter groups with ``lars_exclude=True`` (biases and norm parameters, as in BYOL, SimCLR and
    solo-learn's ``exclude_bias_n_norm``) take plain SGD steps without weight decay.
    """

    def __init__(self, params: Iterable, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    def _rescale(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            updates = grads if group["lars_exclude"] else self._rescale(params, grads, group)
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            if any(buffer is None for buffer in buffers):  # the first step: the buffer is the update
                buffers = [update.clone() for update in updates]
                for param, buffer in zip(params, buffers):
                    self.state[param]["momentum_buffer"] = buffer
            else:
                torch._foreach_mul_(buffers, group["momentum"])
                torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return None


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(torch._foreach_norm(tensors))


class LARS(_LayerwiseSGD):
    """LARS as BYOL and DINO run it: ``u = g + wd * w``, rescaled by ``eta * ||w|| / ||u||`` (1 where a
    norm is 0), then SGD momentum: ``buf = m * buf + u``, ``w -= lr * buf``."""

    def _rescale(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        updates = torch._foreach_add(grads, params, alpha=group["weight_decay"]) if group["weight_decay"] else list(grads)
        param_norms, update_norms = _norms(params), _norms(updates)
        trust = torch.where((param_norms > 0) & (update_norms > 0), group["eta"] * param_norms / update_norms, 1.0)
        return torch._foreach_mul(updates, list(trust.unbind()))


class LARC(_LayerwiseSGD):
    """Clipped LARS (LARC) as solo-learn's ``LARSWrapper(clip=True, exclude_bias_n_norm=True)`` computes
    it (``solo/utils/lars.py``), the optimizer of Krishna et al.'s gated VICReg (``--lars
    --grad_clip_lars --eta_lars 0.02``).

    ``local = eta * ||w|| / (||g|| + wd * ||w|| + 1e-8)``; the update ``(g + wd * w) * min(local / lr, 1)``
    then takes SGD momentum, so its step is ``min(local, lr)`` times ``g + wd * w``: the layer-wise rate
    clipped at the global one. Where ``||w||`` or ``||g||`` is 0 the gradient is used as it is, with no
    weight decay, as there.
    """

    eps = 1e-8

    def _rescale(self, params: list[torch.Tensor], grads: list[torch.Tensor], group: dict) -> list[torch.Tensor]:
        decay, lr = group["weight_decay"], group["lr"]
        param_norms, grad_norms = _norms(params), _norms(grads)
        local = group["eta"] * param_norms / (grad_norms + decay * param_norms + self.eps)
        both = (param_norms > 0) & (grad_norms > 0)
        scale = torch.where(both, torch.clamp(local / lr, max=1.0), 1.0)
        updates = torch._foreach_add(grads, params, alpha=decay) if decay else list(grads)
        if decay:  # no decay where a norm is 0
            updates = [torch.where(ok, update, grad) for ok, update, grad in zip(both.unbind(), updates, grads)]
        return torch._foreach_mul(updates, list(scale.unbind()))


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


OPTIMIZERS = ("sgd", "lars", "larc", "adamw")


def build_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float,
                    lars_eta: float = 0.001) -> torch.optim.Optimizer:
    """``name`` in :data:`OPTIMIZERS` over the groups of :func:`parameter_groups`.

    SGD runs fused on CUDA (one kernel for the whole step) and with ``foreach`` kernels elsewhere.
    """
    if name == "sgd":
        for group in groups:
            group.pop("lars_exclude", None)
        on_cuda = all(p.is_cuda for group in groups for p in group["params"]) and torch.cuda.is_available()
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=True if on_cuda else None,
                               foreach=None if on_cuda else True)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, eta=lars_eta)
    if name == "larc":
        return LARC(groups, lr=lr, momentum=momentum, eta=lars_eta)
    if name == "adamw":
        # betas (0.9, 0.999), eps 1e-8: torch's defaults, as moco-v3's main_moco.py keeps them;
        # ``momentum`` has no role here. Decoupled weight decay per group (0 for biases and norms).
        for group in groups:
            group.pop("lars_exclude", None)
        on_cuda = all(p.is_cuda for group in groups for p in group["params"]) and torch.cuda.is_available()
        return torch.optim.AdamW(groups, lr=lr, fused=True if on_cuda else None, foreach=None if on_cuda else True)
    raise ValueError(f"optimizer {name!r} is not one of {', '.join(OPTIMIZERS)}")
