"""Evaluation images held in memory: BN calibration, kNN bank and validation split, drawn once.

Images are kept as uint8 (:class:`ImageBank`) and normalised a batch at a time, so 8,000 images at
224 px take 1.2 GB instead of 4.8 GB, and nothing else holds a float copy of the whole set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from supernet.data.datasets import ImageData, label_of
from supernet.data.views import eval_pixels, normalize_pixels

__all__ = ["EvalData", "ImageBank", "prepare_eval_data"]


class ImageBank:
    """uint8 images (N, 3, R, R) that read as normalised float32 tensors, a slice or index at a time.

    ``bank[i]``, ``bank[a:b]`` and ``bank[index_tensor]`` return float32 tensors (ImageNet
    normalisation); ``bank.pixels`` is the uint8 storage. It quacks like the image tensor it stands
    for where evaluation code reads one (``len``, ``shape``, indexing, ``split``).
    """

    def __init__(self, pixels: torch.Tensor) -> None:
        if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"ImageBank: expected uint8 (N, 3, H, W) pixels, got {pixels.dtype} {tuple(pixels.shape)}")
        self.pixels = pixels

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.pixels.shape

    def __getitem__(self, index: int | slice | torch.Tensor) -> torch.Tensor:
        return normalize_pixels(self.pixels[index])

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive normalised batches of ``size`` images (the last may be smaller)."""
        return (self[start : start + size] for start in range(0, len(self), size))

    def float(self) -> torch.Tensor:
        """Every image as one normalised float32 tensor (for small sets only)."""
        return self[:]


@dataclass(frozen=True)
class EvalData:
    """Images cropped for evaluation and held as uint8.

    ``calibration``: BN recalibration images (training split, fixed seed); ``bank``: labeled
    training images the kNN votes with; ``val``: the images it is scored on, from the test split
    when the data has one, else from the held-out split (``val_source`` says which).
    """

    calibration: ImageBank
    bank: ImageBank
    bank_labels: torch.Tensor
    val: ImageBank
    val_labels: torch.Tensor
    num_classes: int
    resolution: int
    val_source: str = "holdout"


def prepare_eval_data(
    data: ImageData,
    *,
    resolution: int,
    calibration_images: int = 2000,
    bank_size: int = 5000,
    val_size: int | None = None,
    seed: int = 0,
) -> EvalData:
    """Draw (with ``seed``) and crop the calibration, bank and validation images once."""
    transform = eval_pixels(resolution)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.train)).tolist()
    calibration = _stack(data.train, order[:calibration_images], transform, resolution)[0]
    labeled = (i for i in order if label_of(data.train, i) >= 0)  # STL-10's unlabeled images cannot vote
    bank, bank_labels = _stack(data.train, list(islice(labeled, bank_size)), transform, resolution)
    source, val_source = (data.test, "test") if data.test is not None else (data.holdout, "holdout")
    val_index = list(range(len(source)))
    if val_size is not None:
        val_index = rng.permutation(len(source))[:val_size].tolist()
    val, val_labels = _stack(source, val_index, transform, resolution)
    return EvalData(ImageBank(calibration), ImageBank(bank), bank_labels, ImageBank(val), val_labels, data.num_classes,
                    resolution, val_source)


def _stack(dataset: Dataset, index: list[int], transform: Callable, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not index:
        raise ValueError("evaluation data: no images were selected; check data.holdout_size and the oracle sizes")
    images = torch.empty((len(index), 3, resolution, resolution), dtype=torch.uint8)  # filled in place, no float copy
    labels = torch.empty(len(index), dtype=torch.long)
    for row, i in enumerate(index):
        image, label = dataset[i]
        images[row] = transform(image)
        labels[row] = int(label)
    return images, labels
