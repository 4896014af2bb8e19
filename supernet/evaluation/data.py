"""Evaluation images held in memory: BN calibration, kNN bank and validation split, drawn once."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from supernet.data.datasets import ImageData, label_of
from supernet.data.views import eval_transform


@dataclass(frozen=True)
class EvalData:
    """Images already transformed for evaluation, held in memory as (N, 3, R, R) float tensors.

    ``calibration``: BN recalibration images (training split, fixed seed); ``bank``: labeled
    training images the kNN votes with; ``val``: the held-out split it is scored on.
    """

    calibration: torch.Tensor
    bank: torch.Tensor
    bank_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    resolution: int


def prepare_eval_data(
    data: ImageData,
    *,
    resolution: int,
    calibration_images: int = 2000,
    bank_size: int = 5000,
    val_size: int | None = None,
    seed: int = 0,
) -> EvalData:
    """Draw (with ``seed``) and transform the calibration, bank and validation images once."""
    transform = eval_transform(resolution)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.train)).tolist()
    calibration = _stack(data.train, order[:calibration_images], transform)[0]
    labeled = (i for i in order if label_of(data.train, i) >= 0)  # STL-10's unlabeled images cannot vote
    bank_index = list(islice(labeled, bank_size))
    bank, bank_labels = _stack(data.train, bank_index, transform)
    val_index = list(range(len(data.holdout)))
    if val_size is not None:
        val_index = rng.permutation(len(data.holdout))[:val_size].tolist()
    val, val_labels = _stack(data.holdout, val_index, transform)
    return EvalData(calibration, bank, bank_labels, val, val_labels, data.num_classes, resolution)


def _stack(dataset: Dataset, index: list[int], transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for i in index:
        image, label = dataset[i]
        images.append(transform(image))
        labels.append(int(label))
    if not images:
        raise ValueError("evaluation data: no images were selected; check data.holdout_size and the oracle sizes")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)
