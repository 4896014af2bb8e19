"""What the training loop reads each step: seeded multi-view samples in a seeded, sharded order.

An epoch's order is a function of (seed, epoch) only. With the DataLoader (``data.pipeline=loader``)
a view's augmentation is a function of (seed, epoch, image index); with views made on the device
in batches, the parameters of view ``v`` of global batch ``b`` are drawn from a generator seeded by
(seed, epoch, b, v) for the whole global batch. Either way a resumed run continues exactly and
every data-parallel rank reads its own share of the same global batch, whatever process or
DataLoader worker builds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochSampler", "ViewDataset", "augmentation_seed", "batch_view_seed"]


def augmentation_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s views in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def batch_view_seed(seed: int, epoch: int, batch: int, view: int) -> int:
    """The seed of view ``view`` of every image of global batch ``batch`` of ``epoch`` (batched views)."""
    return int(np.random.SeedSequence([seed, epoch, batch, view]).generate_state(1)[0])


class ViewDataset(Dataset):
    """Multi-view samples whose augmentation is a function of (seed, epoch, index) only.

    Indices arrive encoded as ``epoch * len(base) + index`` (see :class:`EpochSampler`); the views
    are drawn under a forked RNG seeded from them.
    """

    def __init__(self, base: Dataset, views: Callable[[Image.Image], list[torch.Tensor]], *, seed: int) -> None:
        self.base, self.views, self.seed = base, views, seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, encoded: int) -> list[torch.Tensor]:
        epoch, index = divmod(encoded, len(self))
        image, _label = self.base[index]  # labels never reach the SSL loss
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augmentation_seed(self.seed, epoch, index))
            return self.views(image)


class EpochSampler(Sampler[int]):
    """Seeded permutation of epoch ``epoch``, from batch ``start_batch`` on, as encoded indices.

    ``batch_size`` is the global batch; rank ``rank`` of ``world_size`` takes every
    ``world_size``-th image of each global batch, so the union over ranks is the one-process batch.
    """

    def __init__(
        self, size: int, *, seed: int, epoch: int, batch_size: int, start_batch: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.size, self.epoch, self.batch_size = size, epoch, batch_size
        order_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
        order = torch.randperm(size, generator=torch.Generator().manual_seed(order_seed))
        order = order[start_batch * batch_size : (size // batch_size) * batch_size]
        self.order = order.view(-1, batch_size)[:, rank::world_size].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * self.size
        return iter((self.order + offset).tolist())

    def __len__(self) -> int:
        return len(self.order)
