"""How a sub-network's frozen features are scored: one declaration for training and search.

``python -m supernet.train`` monitors kNN with these settings (``knn.*``) and ``nas.search``,
``nas.export`` and ``nas.evaluate`` score with them (``oracle.*``). ``nas.evaluate``'s protocols
(linear evaluation, SlimCLR's switchable probe, SSLight's semi-supervised fine-tuning) are
configured by the dataclasses below (``probe.linear.*``, ``probe.switchable.*``, ``probe.semi.*``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from supernet.evaluation.data import VAL_SPLITS
from supernet.evaluation.scores import DEFAULT_SCORE, SCORE_KINDS
from supernet.settings import Rules, at_least, choice, in_range, optional, positive

OracleScore = choice("OracleScore", SCORE_KINDS)
"""``oracle.score``: what the search ranks sub-networks by (:mod:`supernet.evaluation.scores`)."""
ValSplit = choice("ValSplit", VAL_SPLITS)
"""``oracle.val_split``: where the oracle's validation images come from (:func:`supernet.evaluation.data.prepare_eval_data`)."""


@dataclass
class KnnSettings:
    """BN recalibration images, the labeled bank, the validation split, the weighted kNN (DESIGN.md §4)."""

    calibration_images: int = 2000  # BN recalibration images from the training split, fixed seed (Once-for-All)
    bank_size: int = 10000  # labeled training images that vote (and fit the oracle's probe_* kinds' probe)
    val_size: Optional[int] = None  # images scored; null = all of the held-out split (oracle: 5,000 of its own)
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    seed: int = 0  # draws the calibration and bank images (the oracle's validation images: val_seed)

    RULES: ClassVar[Rules] = {
        "calibration_images": at_least(1), "bank_size": at_least(1), "val_size": optional(at_least(1)),
        "k": at_least(1), "temperature": positive, "batch_size": at_least(2),
    }


@dataclass
class OracleSettings(KnnSettings):
    """The weight-sharing oracle (``oracle.*`` of ``nas.search``, ``nas.export``, ``nas.evaluate``): the kNN's
    images and settings, the score it ranks by, and where its validation images come from.

    ``val_split: train`` (default): the oracle selects on ``val_size`` (null: 10,000,
    :data:`~supernet.evaluation.data.TRAIN_VAL_IMAGES`) labelled *training* images chosen once by ``val_seed``
    (at most half the labelled training images), and ``seed`` draws the ``bank_size`` (20,000; the training
    monitor's kNN keeps 10,000) of the bank and the calibration images from the others; the held-out split
    (``data.test_root``, ``data.official_test`` or the holdout) is left to judge the oracle and never chosen on.
    Sizes from benchmarks/RESULTS.md §6.1 (20 CIFAR-10 sub-networks, the default score): two oracles of
    different seeds ranked them alike at tau 0.78 with 5,000 bank and 5,000 validation images, 0.93-0.95 with
    10,000 each, 0.98 with a 20,000-image bank (the bank, the probe's training set, is the larger part of the
    seed-to-seed noise; 20,000 validation images changed nothing); one standard error of an accuracy near
    50 % on N images is sqrt(0.25 / N), 0.5 points on 10,000. ``val_split: heldout`` scores on the held-out split as before
    issue 23 (``val_size``: null for all of it): for judging, not for search. ``score``: the kind
    :meth:`nas.study.oracle.Oracle.score_of` returns (:mod:`supernet.evaluation.scores`); ``probe_epochs``
    and ``probe_weight_decay`` set the logistic-regression probe of the ``probe_*`` kinds.
    """

    val_split: ValSplit = ValSplit.train  # type: ignore[valid-type]  # train | heldout (judging only)
    val_seed: int = 0  # draws the validation images (val_split=train) once; seed then draws only bank and calibration
    bank_size: int = 20000  # labeled training images that fit the probe_* kinds' probe and vote in the kNN
    score: OracleScore = OracleScore(DEFAULT_SCORE)  # type: ignore[valid-type]
    probe_epochs: int = 100  # L-BFGS iterations of the probe_* scores
    probe_weight_decay: float = 1e-4

    RULES: ClassVar[Rules] = {**KnnSettings.RULES, "probe_epochs": at_least(1), "probe_weight_decay": at_least(0)}


# -- evaluation protocols of ``nas.evaluate`` (``probe.*``) ------------------------------------------
def _crop_scale(value: list[float]) -> str | None:
    valid = len(value) == 2 and 0 < value[0] <= value[1] <= 1
    return None if valid else "[low, high] with 0 < low <= high <= 1"


def _widths(value: list[float]) -> str | None:
    valid = len(value) >= 1 and len(set(value)) == len(value) and all(0 < width <= 1 for width in value)
    return None if valid else "one or more distinct width multipliers in (0, 1]"


def _fractions(value: list[float]) -> str | None:
    valid = len(value) >= 1 and all(0 < fraction <= 1 for fraction in value)
    return None if valid else "one or more label fractions in (0, 1]"


def _epoch_list(value: list[int]) -> str | None:
    return None if len(value) >= 1 and all(epochs >= 1 for epochs in value) else "one or more epoch counts >= 1"


@dataclass
class LinearEvalSettings:
    """Standard linear evaluation: a linear head on a frozen encoder, SGD on augmented training images.

    SimCLR (Chen et al. 2020, appendix B.6), BYOL, MoCo v3 (Chen et al. 2021) and DINO (Caron et al.
    2021): the encoder in eval mode (BatchNorm statistics fixed), SGD with momentum 0.9 and no weight
    decay, lr = ``base_lr`` x ``batch_size`` / 256 on a per-step cosine schedule, random-resized crop
    and horizontal flip of the training images; 100 epochs as DINO and US3L's CIFAR evaluation (SimCLR
    and MoCo v3 use 90). ``head_norm``: a BatchNorm without affine parameters before the head (MoCo v3,
    MAE), which makes one learning rate fit features of any scale (trained, untrained, any width).
    """

    epochs: int = 100
    batch_size: int = 256
    base_lr: float = 0.1  # lr = base_lr * batch_size / 256 (SimCLR's and MoCo v3's scaling rule)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0  # none in SimCLR, BYOL, MoCo v3, DINO
    head_norm: bool = True  # BatchNorm1d(affine=False) before the linear layer (MoCo v3, MAE)
    augment: bool = True  # false: center crops only, and features are computed once
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop's default
    flip: bool = True

    RULES: ClassVar[Rules] = {"epochs": at_least(1), "batch_size": at_least(2), "base_lr": positive,
                              "momentum": in_range(0, 1, high_open=True), "weight_decay": at_least(0),
                              "crop_scale": _crop_scale}


@dataclass
class SwitchableProbeSettings(LinearEvalSettings):
    """SlimCLR's switchable linear probe (Zhao et al. 2023, ``main_ssl_lincls.py`` with
    ``--slim_fc supervised_switch --inplace_distill 1 --inplace_distill_mixed 1``): one linear head per
    uniform width, trained jointly on the frozen supernet; the widest head learns from the labels, each
    narrower one from 0.5 cross-entropy + 0.5 distillation from the widest head's (detached) softmax;
    the losses are summed. SlimCLR: SGD momentum 0.9, lr 0.1 x batch / 256, weight decay 1e-6, cosine,
    90 epochs, random-resized crop and flip."""

    epochs: int = 90
    weight_decay: float = 1e-6
    widths: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.5, 0.25])  # SlimCLR's width_mult_list
    distill: bool = True  # false: every head learns from the labels alone

    RULES: ClassVar[Rules] = {**LinearEvalSettings.RULES, "widths": _widths}


@dataclass
class SemiSupervisedSettings:
    """SSLight's semi-supervised evaluation (Liu et al. ICLR 2023, ``classification/config/exp_yamls/
    dino/dino_r18_semi.yaml``): the whole network fine-tuned on a class-balanced 1 % / 10 % of the
    training labels, scored on the test split. SSLight: SGD with Nesterov momentum 0.9, lr 0.03 x
    batch / 256 for backbone and head alike (LR_FACTOR 1.0), no weight decay, cosine to ~0, 60 epochs
    at 1 % and 30 at 10 %, random-resized crop and flip, network in train mode. SSLight's head is the
    pre-trained projector's first two layers plus a new linear layer; an exported sub-network has no
    projector, so here the head is linear (on a non-affine BatchNorm with ``head_norm``)."""

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])
    epochs: list[int] = field(default_factory=lambda: [60, 30])  # one per fraction
    batch_size: int = 128
    base_lr: float = 0.03  # lr = base_lr * batch_size / 256
    backbone_lr_scale: float = 1.0  # the backbone's lr relative to the head's (SSLight: 1.0)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    head_norm: bool = True
    augment: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    flip: bool = True

    RULES: ClassVar[Rules] = {"fractions": _fractions, "epochs": _epoch_list, "batch_size": at_least(2),
                              "base_lr": positive, "backbone_lr_scale": at_least(0),
                              "momentum": in_range(0, 1, high_open=True), "weight_decay": at_least(0),
                              "crop_scale": _crop_scale}
