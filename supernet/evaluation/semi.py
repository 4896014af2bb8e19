"""SSLight's semi-supervised evaluation: fine-tune on 1 % and 10 % of the training labels.

SSLight (Liu et al. ICLR 2023; its ``classification/engines/cls_trainer.py`` with ``EVAL_METHOD:
Semi``) fine-tunes the whole network, in train mode, on a class-balanced label subset (SimCLR's 1 % /
10 % ImageNet lists, about 12.8 / 128 images per class) and scores it on the validation split.
Hyper-parameters and the one deviation (a linear head instead of the pre-trained projector's layers):
:class:`~supernet.evaluation.settings.SemiSupervisedSettings`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from supernet.evaluation.data import EvalData, ImageBank
from supernet.evaluation.protocols import fit_heads, scaled_lr, score_heads
from supernet.evaluation.settings import SemiSupervisedSettings

__all__ = ["LabelFractionScore", "class_balanced_subset", "semi_supervised_evaluation"]


def class_balanced_subset(labels: torch.Tensor, fraction: float, *, seed: int) -> torch.Tensor:
    """Sorted indices into ``labels`` (N,) of a class-balanced subset of about ``fraction * N`` items.

    Every class present (labels >= 0) contributes the same number, ``max(1, round(fraction * N / C))``
    for C classes, drawn without replacement by a generator seeded with ``seed``; a class with fewer
    items gives all it has. The draw for a class depends only on ``seed`` and that class's items.

    >>> labels = torch.arange(10).repeat(100)               # 1,000 items, 10 classes
    >>> class_balanced_subset(labels, 0.01, seed=0).numel()  # 1 per class
    10
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"class_balanced_subset: fraction={fraction}; expected 0 < fraction <= 1")
    labels = labels.long()
    classes = torch.unique(labels[labels >= 0])
    if classes.numel() == 0:
        raise ValueError("class_balanced_subset: no labelled items (every label is negative)")
    per_class = max(1, round(fraction * int((labels >= 0).sum()) / classes.numel()))
    chosen = []
    for label in classes.tolist():
        members = torch.nonzero(labels == label).flatten()
        generator = torch.Generator().manual_seed((seed * 1_000_003 + label) % 2**63)
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


@dataclass(frozen=True)
class LabelFractionScore:
    """Top-1 after fine-tuning on ``labelled_images`` (``fraction`` of the training labels)."""

    fraction: float
    labelled_images: int
    epochs: int
    lr: float
    top1: float


def semi_supervised_evaluation(
    network: nn.Module,
    data: EvalData,
    *,
    settings: SemiSupervisedSettings | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[LabelFractionScore]:
    """For each of ``settings.fractions``: fine-tune a copy of ``network`` (ready: BatchNorm
    recalibrated) with a linear head on that class-balanced share of ``data.bank`` for the matching
    ``settings.epochs``, and score it on ``data.val``. ``network`` itself is left unchanged.
    """
    settings = settings or SemiSupervisedSettings()
    if len(settings.epochs) != len(settings.fractions):
        raise ValueError(f"semi_supervised_evaluation: {len(settings.epochs)} epoch counts for "
                         f"{len(settings.fractions)} fractions; expected one per fraction")
    lr = scaled_lr(settings.base_lr, settings.batch_size)
    scores = []
    for fraction, epochs in zip(settings.fractions, settings.epochs):
        subset = class_balanced_subset(data.bank_labels, fraction, seed=seed)
        images = ImageBank(data.bank.pixels[subset])  # at most `fraction` of the bank
        encoders = {"network": copy.deepcopy(network)}
        heads = fit_heads(encoders, images, data.bank_labels[subset], num_classes=data.num_classes, epochs=epochs,
                          batch_size=settings.batch_size, lr=lr, momentum=settings.momentum,
                          nesterov=settings.nesterov, weight_decay=settings.weight_decay,
                          head_norm=settings.head_norm, augment=settings.augment,
                          crop_scale=(float(settings.crop_scale[0]), float(settings.crop_scale[1])),
                          flip=settings.flip, finetune=True, backbone_lr_scale=settings.backbone_lr_scale,
                          seed=seed, device=device)
        top1 = score_heads(encoders, heads, data.val, data.val_labels, batch_size=settings.batch_size,
                           device=device)["network"]
        scores.append(LabelFractionScore(float(fraction), int(subset.numel()), int(epochs), lr, top1))
    return scores
