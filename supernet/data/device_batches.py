"""Training batches whose views are made on the device from an :class:`~supernet.data.store.ImageStore`.

Per step: the global batch's rows come from :class:`~supernet.data.sampling.EpochSampler` (the
order and the sharding the DataLoader path uses), every view's parameters are drawn on the host for
the whole global batch from generators seeded by (seed, epoch, batch, view), this rank keeps its
rows (``rank::world_size``), gathers its images from the store and makes all views there at once.

On a CPU the views are made on ``cpu_threads`` torch threads (default 1, as one loader worker, but
for the whole batch), the run's own thread count restored after: these elementwise ops on a few MB
gain little from a second thread and lose much when the cores are shared, because OpenMP threads
spin-wait for each other at every op (2 cores at load 5: 6,400 images/s on one thread, 480 on two).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from supernet.data.batched_views import BatchedViews, to_device
from supernet.data.sampling import EpochSampler, batch_view_seed
from supernet.data.store import ImageStore

__all__ = ["DeviceBatches"]


class DeviceBatches:
    """``epoch(e, start_batch)`` yields each step's list of view batches, (B / world_size, 3, side, side) each."""

    def __init__(self, *, store: ImageStore, views: BatchedViews, seed: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, cpu_threads: int | None = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch_size: {batch_size} does not split over {world_size} ranks")
        self.store, self.views, self.seed = store, views, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.cpu_threads = cpu_threads  # None: torch's current setting

    def steps_per_epoch(self) -> int:
        return len(self.store) // self.batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[list[Tensor]]:
        """The batches of ``epoch`` from ``start_batch`` on (a resumed run starts mid-epoch)."""
        order = EpochSampler(len(self.store), seed=self.seed, epoch=epoch, batch_size=self.batch_size,
                             start_batch=start_batch).order.view(-1, self.batch_size)  # one process: the global order
        for offset, rows in enumerate(order):
            yield self.batch(epoch=epoch, batch=start_batch + offset, rows=rows)

    def batch(self, *, epoch: int, batch: int, rows: Tensor) -> list[Tensor]:
        """Views of this rank's share of the global batch ``rows`` (store indices, host)."""
        generators = [torch.Generator().manual_seed(batch_view_seed(self.seed, epoch, batch, view))
                      for view in range(len(self.views))]
        params = self.views.draw(generators, sizes=self.store.sizes[rows], stored=self.store.stored)
        mine = slice(self.rank, None, self.world_size)  # EpochSampler's sharding
        device = self.store.pixels.device
        with _threads(self.cpu_threads if device.type == "cpu" else None):
            pixels = self.store.pixels.index_select(0, to_device(rows[mine], device))
            return self.views(pixels, [p.rows(mine) for p in params])


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (None: unchanged) for the block, then restored."""
    previous = torch.get_num_threads()
    if count is not None and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
