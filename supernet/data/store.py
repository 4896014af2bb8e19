"""The training images decoded once into one uint8 tensor on the training device.

``data.pipeline`` chooses how training views are made: ``loader`` (PIL, per image, in DataLoader
workers), ``device`` (this store plus :mod:`supernet.data.batched_views`), or ``auto``: ``device``
when the store takes at most :data:`STORE_MEMORY_SHARE` of the memory free on the training device
(on a CPU, of the RAM available), else ``loader``.

Layout: when every training image has one size (CIFAR, STL-10, MNIST, most ImageFolder trees of
one data set) the store is (N, 3, H, W) at that size, the decoded pixels exactly. An ImageFolder
of mixed sizes is stored *squeezed*: every image resized (PIL bicubic, antialiased) to S x S with
S = ``data.store_side`` or ``int(resolution * 256 / 224)`` (256 for 224-px training), its native
(height, width) kept beside it. Crop boxes are still drawn in native pixels, as the PIL path draws
them, and mapped onto the S x S grid, so a view covers the same part of the image; what the squeeze
costs is detail: the longer side keeps S of its pixels (a 500 x 375 photo: 256 of 500), and a
small crop is enlarged from fewer source pixels than PIL would have.

The store is the only copy of the images the device path makes: no float copy of the set, nothing
in DataLoader workers (which, when ``data.num_workers`` > 0, only decode files during the build).
Making a batch's views takes memory beside it (the batch's images as float32 at the stored size, see
:func:`~supernet.data.batched_views.views_working_bytes`); ``auto`` counts both.

Under ``torchrun`` every process decodes and holds the whole store on its own device: the seeded
order gives each rank different images every epoch, so a rank's share is not known in advance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from supernet.data.batched_views import views_working_bytes
from supernet.data.sources import DataError

__all__ = ["PIPELINES", "STORE_MEMORY_SHARE", "ImageStore", "PipelineChoice", "StoreLayout", "available_memory",
           "build_store", "choose_pipeline", "native_sizes", "store_layout"]

PIPELINES = ("auto", "device", "loader")
STORE_MEMORY_SHARE = 0.5  # the rest is the network's: activations, optimizer state, the loader of evaluation
_CHUNK = 1024  # images decoded or copied per transfer while the store is built


@dataclass(frozen=True)
class StoreLayout:
    """How ``count`` images are stored: (count, 3, height, width) uint8; ``squeezed``: resized to that."""

    count: int
    height: int
    width: int
    squeezed: bool

    @property
    def nbytes(self) -> int:
        return self.count * 3 * self.height * self.width

    def describe(self) -> str:
        how = f" (mixed sizes, each squeezed to {self.height}x{self.width})" if self.squeezed else ""
        return f"{self.count:,} images at {self.height}x{self.width}{how}"


@dataclass(frozen=True)
class ImageStore:
    """``pixels``: uint8 (N, 3, H, W) on the training device; ``sizes``: (N, 2) int64 native (height,
    width) on the host, where crop boxes are drawn."""

    pixels: Tensor
    sizes: Tensor
    layout: StoreLayout

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def stored(self) -> tuple[int, int]:
        return self.layout.height, self.layout.width


@dataclass(frozen=True)
class PipelineChoice:
    """The pipeline a run uses (``device`` or ``loader``), why, and what the store would hold."""

    name: str
    reason: str
    layout: StoreLayout | None = None
    sizes: Tensor | None = None


def _segments(dataset: Dataset, index: np.ndarray, positions: np.ndarray) -> list[tuple[Dataset, np.ndarray, np.ndarray]]:
    """(pool, its item indices, positions in the split) groups behind Subset and ConcatDataset layers."""
    if isinstance(dataset, Subset):
        return _segments(dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)[index], positions)
    if isinstance(dataset, ConcatDataset):
        groups, bounds = [], [0, *dataset.cumulative_sizes]
        for part, low, high in zip(dataset.datasets, bounds[:-1], bounds[1:]):
            inside = (index >= low) & (index < high)
            if inside.any():
                groups += _segments(part, index[inside] - low, positions[inside])
        return groups
    return [(dataset, index, positions)]


def _split_segments(dataset: Dataset) -> list[tuple[Dataset, np.ndarray, np.ndarray]]:
    count = len(dataset)  # type: ignore[arg-type]
    return _segments(dataset, np.arange(count, dtype=np.int64), np.arange(count, dtype=np.int64))


def native_sizes(dataset: Dataset) -> Tensor:
    """(N, 2) int64 (height, width) of every image of ``dataset``: from array shapes or file headers,
    decoding only pools that offer neither."""
    sizes = np.empty((len(dataset), 2), dtype=np.int64)  # type: ignore[arg-type]
    for pool, index, positions in _split_segments(dataset):
        if hasattr(pool, "image_sizes"):
            sizes[positions] = pool.image_sizes(index)
        else:
            sizes[positions] = [(image.height, image.width) for image in (pool[int(i)][0] for i in index)]
    return torch.from_numpy(sizes)


def store_layout(sizes: Tensor, *, resolution: int, store_side: int | None) -> StoreLayout:
    """Native size when all images share one, else squeezed to ``store_side`` or resolution * 256/224."""
    first = sizes[0]
    if bool((sizes == first).all()) and store_side is None:
        return StoreLayout(len(sizes), int(first[0]), int(first[1]), squeezed=False)
    side = store_side or max(resolution, int(resolution * 256 / 224))
    return StoreLayout(len(sizes), side, side, squeezed=True)


def available_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device, or available RAM (``MemAvailable``) for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def choose_pipeline(requested: str, *, dataset: Dataset, resolution: int, store_side: int | None,
                    device: torch.device, free: int | None = None, label: str | None = None, view_batch: int = 0,
                    view_sides: list[int] | None = None) -> PipelineChoice:
    """``data.pipeline`` resolved for this data and device (``free``: bytes, measured when None;
    ``label``: how the reason names the request, ``data.pipeline=<requested>`` by default).

    What must fit: the store, plus what making a batch's views takes beside it
    (:func:`~supernet.data.batched_views.views_working_bytes` of ``view_batch`` images per process and
    views of ``view_sides`` px): small for CIFAR, gigabytes for large images kept at their native size.
    """
    if requested not in PIPELINES:
        raise DataError(f"data.pipeline: {requested!r} is not valid; expected one of: {', '.join(PIPELINES)}")
    label = label or f"data.pipeline={requested}"
    if requested == "loader":
        return PipelineChoice("loader", f"{label}: PIL views per image in DataLoader workers")
    sizes = native_sizes(dataset)
    layout = store_layout(sizes, resolution=resolution, store_side=store_side)
    free = available_memory(device) if free is None else free
    working = views_working_bytes((layout.height, layout.width), images=view_batch, sides=view_sides or [])
    need = layout.nbytes + working
    fits = need <= STORE_MEMORY_SHARE * free
    making = (f" and making a batch's views {_gigabytes(working)} more ({view_batch} images at "
              f"{layout.height}x{layout.width} as float32)") if working else ""
    facts = (f"the uint8 store of {layout.describe()} takes {_gigabytes(layout.nbytes)}{making}, "
             f"{'within' if fits else 'over'} {STORE_MEMORY_SHARE:.0%} of the {_gigabytes(free)} free on {device.type}")
    if requested == "device":
        if need > free:
            raise DataError(f"data.pipeline: device, but {facts}; expected data.pipeline=auto or loader, fewer images "
                            "(data.max_images) or a smaller data.store_side")
        return PipelineChoice("device", f"{label}: {facts}", layout, sizes)
    if fits:
        return PipelineChoice("device", f"{label} chose device: {facts}", layout, sizes)
    return PipelineChoice("loader", f"{label} chose loader: {facts}")


class _Decoded(Dataset):
    """Items ``indices`` of ``pool`` as uint8 (3, H, W), resized to ``side`` x ``side`` when given."""

    def __init__(self, pool: Dataset, indices: np.ndarray, side: int | None) -> None:
        self.pool, self.indices, self.side = pool, indices, side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Tensor:
        image = self.pool[int(self.indices[item])][0]
        image = image if image.mode == "RGB" else image.convert("RGB")
        if self.side is not None and image.size != (self.side, self.side):
            image = image.resize((self.side, self.side), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())


def build_store(dataset: Dataset, *, sizes: Tensor, layout: StoreLayout, device: torch.device,
                num_workers: int = 0) -> ImageStore:
    """Decode every image of ``dataset`` once into the store ``layout`` describes, on ``device``.

    Array sources are copied in chunks; files are decoded (in ``num_workers`` DataLoader workers
    when > 0) a chunk at a time, so the host never holds more than a chunk beside the store.
    """
    pixels = torch.empty((layout.count, 3, layout.height, layout.width), dtype=torch.uint8, device=device)
    side = layout.height if layout.squeezed else None
    for pool, index, positions in _split_segments(dataset):
        if side is None and hasattr(pool, "uint8_pixels"):
            chunks = (torch.from_numpy(np.ascontiguousarray(pool.uint8_pixels(index[start:start + _CHUNK])))
                      for start in range(0, len(index), _CHUNK))
        else:
            chunks = iter(DataLoader(_Decoded(pool, index, side), batch_size=_CHUNK, num_workers=num_workers))
        start = 0
        for chunk in chunks:
            rows = torch.from_numpy(positions[start:start + len(chunk)])
            pixels.index_copy_(0, rows.to(device), chunk.to(device))
            start += len(chunk)
    return ImageStore(pixels=pixels, sizes=sizes, layout=layout)
