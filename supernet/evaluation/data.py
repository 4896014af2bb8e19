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

__all__ = ["TRAIN_VAL_IMAGES", "VAL_SPLITS", "EvalData", "ImageBank", "prepare_eval_data", "split_sizes"]

# Where the validation images come from: ``train``, labelled training images the bank does not hold
# (what the oracle selects on); ``heldout``, the data's test split when it has one, else its holdout
# (what judges: a monitor, an evaluation, a benchmark).
VAL_SPLITS = ("train", "heldout")
# Validation images drawn from the training split when no size is given: near 50 % one standard error of an
# accuracy on N images is sqrt(0.25 / N), 0.5 points on 10,000 (0.71 on 5,000), against gaps of 1-3 points
# between mid-size sub-networks; two oracle seeds ranked 20 sub-networks alike at tau 0.81 with a 5,000-image
# bank and validation split, 0.93 with 10,000 each (benchmarks/RESULTS.md §6.1).
TRAIN_VAL_IMAGES = 10000


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
    when the data has one, else from the held-out split, or (``val_split="train"``) labelled training
    images disjoint from the bank; ``val_source`` says which: ``test``, ``holdout`` or ``train``.
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
    val_split: str = "heldout",
    val_seed: int = 0,
) -> EvalData:
    """Draw (with ``seed``) and crop the calibration, bank and validation images once.

    One permutation of the training images orders everything drawn from them: calibration images are
    its first ``calibration_images`` (labelled or not; they may overlap the bank), the bank its first
    labelled images. ``val_split="heldout"``: ``val_size`` images (null: all) of the test split, else
    of the holdout. ``val_split="train"``: ``val_size`` (null: :data:`TRAIN_VAL_IMAGES`)
    labelled training images drawn once with ``val_seed`` (whatever ``seed`` is), sized by :func:`split_sizes`;
    the calibration images and the bank are then drawn with ``seed`` from the other training images, so the
    held-out split is left to judge whatever is chosen on these, and two seeds differ in their bank and
    calibration only, scored on the same images.
    """
    if val_split not in VAL_SPLITS:
        raise ValueError(f"prepare_eval_data: val_split={val_split!r}; expected one of {', '.join(VAL_SPLITS)}")
    transform = eval_pixels(resolution)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.train)).tolist()
    if val_split == "train":
        labeled = [i for i in range(len(data.train)) if label_of(data.train, i) >= 0]  # STL-10's unlabeled cannot vote
        banked, validated = split_sizes(len(labeled), bank_size=bank_size, val_size=val_size)
        val_index = np.random.default_rng(val_seed).permutation(labeled)[:validated].tolist()
        chosen = set(val_index)
        rest = [i for i in order if i not in chosen]
        calibration = _stack(data.train, rest[:calibration_images], transform, resolution)[0]
        bank, bank_labels = _stack(data.train, [i for i in rest if label_of(data.train, i) >= 0][:banked], transform,
                                   resolution)
        val, val_labels = _stack(data.train, val_index, transform, resolution)
        return EvalData(ImageBank(calibration), ImageBank(bank), bank_labels, ImageBank(val), val_labels,
                        data.num_classes, resolution, "train")
    calibration = _stack(data.train, order[:calibration_images], transform, resolution)[0]
    labeled_iter = (i for i in order if label_of(data.train, i) >= 0)
    bank, bank_labels = _stack(data.train, list(islice(labeled_iter, bank_size)), transform, resolution)
    source, val_source = (data.test, "test") if data.test is not None else (data.holdout, "holdout")
    val_index = list(range(len(source)))
    if val_size is not None:
        val_index = rng.permutation(len(source))[:val_size].tolist()
    val, val_labels = _stack(source, val_index, transform, resolution)
    return EvalData(ImageBank(calibration), ImageBank(bank), bank_labels, ImageBank(val), val_labels, data.num_classes,
                    resolution, val_source)


def split_sizes(labeled: int, *, bank_size: int, val_size: int | None) -> tuple[int, int]:
    """(bank, validation) images drawn from ``labeled`` training images for ``val_split="train"``: the
    validation split takes ``val_size`` (null: :data:`TRAIN_VAL_IMAGES`) but at most half, the bank up
    to ``bank_size`` of the rest; the two never share an image.

    >>> split_sizes(40000, bank_size=10000, val_size=None), split_sizes(4000, bank_size=10000, val_size=None)
    ((10000, 10000), (2000, 2000))
    """
    validated = min(TRAIN_VAL_IMAGES if val_size is None else val_size, labeled // 2)
    return min(bank_size, labeled - validated), validated


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
