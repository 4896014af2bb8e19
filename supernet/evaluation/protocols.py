"""Evaluation protocols that train a classifier head with SGD, and the report every protocol prints.

:func:`linear_evaluation` is the standard linear evaluation of SimCLR, BYOL, MoCo v3 and DINO
(settings and sources: :class:`~supernet.evaluation.settings.LinearEvalSettings`): the encoder frozen
in eval mode (BatchNorm statistics fixed), a linear head (on a BatchNorm without affine parameters,
MoCo v3 / MAE) trained by SGD with a per-step cosine schedule on random-resized crops and flips of
the labelled training images, scored on the test split's center crops.

Augmentation means the features cannot be cached: each step embeds a freshly augmented batch, so an
epoch costs one forward pass of the encoder over the training split (``augment=False`` embeds the
center crops once and trains on the cached features, which gives the same result faster). Images
stay uint8 (:class:`~supernet.evaluation.data.ImageBank`) and are augmented a batch at a time in this
process (:mod:`supernet.evaluation.augment`); nothing is copied into DataLoader workers.

:func:`fit_heads` is the loop SlimCLR's switchable probe (:mod:`supernet.evaluation.switchable`) and
SSLight's semi-supervised fine-tuning (:mod:`supernet.evaluation.semi`) share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from supernet.data.views import normalize_pixels
from supernet.evaluation.augment import random_resized_crop
from supernet.evaluation.data import EvalData, ImageBank
from supernet.evaluation.knn import embed_tensor
from supernet.evaluation.settings import LinearEvalSettings

__all__ = ["LinearHead", "ProtocolReport", "ProtocolScore", "fit_heads", "linear_evaluation", "scaled_lr",
           "score_heads"]


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule of SimCLR / MoCo v3 / DINO: ``base_lr * batch_size / 256``."""
    return base_lr * batch_size / 256


class LinearHead(nn.Module):
    """(B, D) features -> (B, num_classes) logits: optional BatchNorm1d(affine=False), then Linear.

    The linear layer starts from N(0, 0.01) weights and zero bias (MoCo, DINO, SSLight), drawn from
    ``generator``.
    """

    def __init__(self, in_features: int, num_classes: int, *, norm: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.norm: nn.Module = nn.BatchNorm1d(in_features, affine=False) if norm else nn.Identity()
        self.linear = nn.Linear(in_features, num_classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(num_classes, in_features, generator=generator) * 0.01)
            self.linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


def fit_heads(
    encoders: Mapping[str, nn.Module],
    images: ImageBank,
    labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    head_norm: bool = True,
    augment: bool = True,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    flip: bool = True,
    finetune: bool = False,
    backbone_lr_scale: float = 1.0,
    distill: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, LinearHead]:
    """One :class:`LinearHead` per encoder, trained jointly by SGD on ``images`` (N, 3, R, R) uint8
    with ``labels`` (N,); returns the heads (eval mode) by the encoders' names.

    Each step draws one batch (augmented once when ``augment``), runs every encoder on it, and sums
    the heads' cross-entropies; with ``distill`` the first encoder's head is the teacher and every
    other head's loss is 0.5 cross-entropy + 0.5 cross-entropy against the teacher's detached softmax
    (SlimCLR's ``inplace_distill_mixed``). The lr follows a per-step cosine from ``lr`` to 0, no
    warm-up. Encoders are frozen in eval mode unless ``finetune``: then they train (train mode, their
    parameters at ``lr * backbone_lr_scale``), in place. A trailing batch of one image is skipped
    (BatchNorm needs two). Deterministic for a ``seed`` (batch order, crops, flips, head
    initialisation, and any noise the encoders draw while training).
    """
    if not encoders:
        raise ValueError("fit_heads: no encoders given")
    if len(images) < 2 or labels.shape[0] != len(images):
        raise ValueError(f"fit_heads: {len(images)} images and {labels.shape[0]} labels; expected the same number, "
                         "at least 2")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    for encoder in encoders.values():
        _batched(encoder.to(device))
    heads = {name: LinearHead(_feature_dim(encoder, images, device), num_classes, norm=head_norm,
                              generator=generator).to(device)
             for name, encoder in encoders.items()}
    groups = [{"params": [p for head in heads.values() for p in head.parameters()], "lr": lr}]
    if finetune:
        backbone = [p for encoder in encoders.values() for p in encoder.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": lr * backbone_lr_scale})
    optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                weight_decay=weight_decay)
    peak = [group["lr"] for group in optimizer.param_groups]
    cached = None
    if not augment and not finetune:  # frozen encoder, fixed images: the features are the same every epoch
        cached = {name: embed_tensor(encoder, images, batch_size=batch_size, device=device)
                  for name, encoder in encoders.items()}
    labels = labels.long()
    total_steps = epochs * _steps_per_epoch(len(images), batch_size)
    step = 0
    with _seeded(seed, device):
        for encoder in encoders.values():
            encoder.train(finetune)
        for head in heads.values():
            head.train()
        for _ in range(epochs):
            for index in _batches(len(images), batch_size, generator):
                for group, top in zip(optimizer.param_groups, peak):
                    group["lr"] = top * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                target = labels[index].to(device)
                if cached is not None:
                    features = {name: cached[name][index].to(device) for name in encoders}
                else:
                    pixels = images.pixels[index].to(device)
                    batch = (random_resized_crop(pixels, generator=generator, scale=crop_scale, flip=flip)
                             if augment else normalize_pixels(pixels))
                    with torch.set_grad_enabled(finetune):
                        features = {name: encoder(batch) for name, encoder in encoders.items()}
                logits = {name: heads[name](features[name].float()) for name in encoders}
                loss = _loss(logits, target, distill=distill)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
    for encoder in encoders.values():
        encoder.eval()
    for head in heads.values():
        head.eval()
    return heads


@torch.no_grad()
def score_heads(
    encoders: Mapping[str, nn.Module],
    heads: Mapping[str, nn.Module],
    images: ImageBank | torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Top-1 in [0, 1] of each encoder + head (eval mode) on ``images`` (center crops) and ``labels``."""
    device = torch.device(device)
    correct = dict.fromkeys(encoders, 0)
    for name, encoder in encoders.items():
        _batched(encoder.to(device)).eval()
        heads[name].to(device).eval()
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        target = labels[start : start + batch_size].to(device)
        for name, encoder in encoders.items():
            predicted = heads[name](encoder(batch).float()).argmax(dim=1)
            correct[name] += int((predicted == target).sum())
    return {name: count / len(images) for name, count in correct.items()}


def linear_evaluation(
    network: nn.Module,
    data: EvalData,
    *,
    settings: LinearEvalSettings | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 in [0, 1] on ``data.val`` of a linear head trained on ``data.bank`` over the frozen
    ``network`` (eval mode, ready: BatchNorm recalibrated), standard linear evaluation.

    ``settings`` default to the papers' (100 epochs); pass e.g. ``LinearEvalSettings(epochs=2)`` for
    a smoke run.
    """
    settings = settings or LinearEvalSettings()
    encoders = {"network": network}
    heads = fit_heads(encoders, data.bank, data.bank_labels, num_classes=data.num_classes, epochs=settings.epochs,
                      batch_size=settings.batch_size, lr=scaled_lr(settings.base_lr, settings.batch_size),
                      momentum=settings.momentum, nesterov=settings.nesterov, weight_decay=settings.weight_decay,
                      head_norm=settings.head_norm, augment=settings.augment, crop_scale=_pair(settings.crop_scale),
                      flip=settings.flip, seed=seed, device=device)
    return score_heads(encoders, heads, data.val, data.val_labels, batch_size=settings.batch_size,
                       device=device)["network"]


# -- the report --------------------------------------------------------------------------------------
UNTRAINED = "the same architecture at the supernet's initial weights (same seed), BN recalibrated like the trained one"


@dataclass(frozen=True)
class ProtocolScore:
    """One row of a protocol's report: a top-1 beside the untrained twin's (and raw pixels', if run)."""

    name: str  # "linear", "width 0.5", "1% labels"
    top1: float
    untrained: float
    raw_pixels: float | None
    labelled_images: int  # training images whose labels the head (or the fine-tuning) saw
    width: float | None = None  # switchable: the uniform width multiplier
    flops: int | None = None  # switchable: the width's FLOPs (one multiply-add = one flop)
    params: int | None = None


@dataclass(frozen=True)
class ProtocolReport:
    """What a protocol measured and how: its name, source, hyper-parameters as run, splits and scores."""

    name: str
    description: str
    source: str
    hyperparameters: dict[str, Any]
    features: str
    train_images: int
    test_images: int
    test_split: str
    num_classes: int
    scores: tuple[ProtocolScore, ...]
    untrained: str = UNTRAINED
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """``{"protocol": {...everything but the scores...}, "scores": [{...}, ...]}`` (JSON-able)."""
        protocol = asdict(self)
        scores = protocol.pop("scores")
        protocol["notes"] = list(protocol["notes"])
        return {"protocol": protocol, "scores": scores}


# -- helpers -----------------------------------------------------------------------------------------
def _pair(values: list[float] | tuple[float, float]) -> tuple[float, float]:
    low, high = values
    return (float(low), float(high))


def _steps_per_epoch(count: int, batch_size: int) -> int:
    return count // batch_size + (1 if count % batch_size >= 2 else 0)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size]
        if index.shape[0] >= 2:
            yield index


def _loss(logits: Mapping[str, torch.Tensor], target: torch.Tensor, *, distill: bool) -> torch.Tensor:
    names = list(logits)
    teacher = F.softmax(logits[names[0]], dim=1).detach()
    total = F.cross_entropy(logits[names[0]], target)
    for name in names[1:]:
        hard = F.cross_entropy(logits[name], target)
        if distill:
            soft = -(teacher * F.log_softmax(logits[name], dim=1)).sum(dim=1).mean()
            hard = 0.5 * hard + 0.5 * soft
        total = total + hard
    return total


def _feature_dim(encoder: nn.Module, images: ImageBank, device: torch.device) -> int:
    was_training = encoder.training
    with torch.no_grad():
        dim = int(encoder.eval()(images[:2].to(device)).shape[1])
    encoder.train(was_training)
    return dim


def _batched(encoder: nn.Module) -> nn.Module:
    """Gated networks run their masked (batched) mode; gathered mode is batch 1 only."""
    set_gate_mode = getattr(encoder, "set_gate_mode", None)
    if callable(set_gate_mode):
        set_gate_mode("masked")
    return encoder


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global RNG (gates' Gumbel noise, dropout) seeded inside, restored after."""
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
