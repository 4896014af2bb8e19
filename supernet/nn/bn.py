"""BatchNorm post-statistics recalibration (US-Nets; Once-for-All).

Shared running statistics fit no particular sub-network; before a sub-network is evaluated its BN
statistics are re-estimated: reset, then a cumulative (equal-weight) average over ``num_images``
training images drawn with a fixed seed, with the network otherwise in eval mode.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: torch.Tensor | Dataset | Iterable,
    num_images: int = 2000,
    *,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``model`` (in place) and return it.

    ``data``: an image tensor (N, 3, H, W) (or an image store that indexes like one, such as
    :class:`supernet.evaluation.data.ImageBank`) or a dataset of images / (image, label) pairs, from which
    ``num_images`` are drawn without replacement by a generator seeded with ``seed``; or any other
    iterable of batches, whose first ``num_images`` images are used as they come. Works on an
    extracted network and on a supernet at its active config. The model is left in eval mode.
    """
    if num_images <= 0:
        raise ValueError(f"num_images: expected a positive count, got {num_images}")
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if device is None:
        device = next(model.parameters()).device
    saved_momentum = [bn.momentum for bn in batch_norms]
    model.eval()
    for bn in batch_norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every batch weighs by its turn, not exponentially
        bn.train()
    seen = 0
    try:
        for images in _batches(data, num_images, batch_size=batch_size, seed=seed):
            images = images[: num_images - seen].to(device, non_blocking=True)
            if images.shape[0] == 1 and seen > 0:
                break  # a trailing batch of one has no batch statistics (a gate's 1x1 BN would fail on it)
            model(images)
            seen += images.shape[0]
            if seen >= num_images:
                break
    finally:
        for bn, momentum in zip(batch_norms, saved_momentum):
            bn.momentum = momentum
        model.eval()
    if seen == 0:
        raise ValueError("recalibrate_bn: the data yielded no images")
    return model


def _batches(data: torch.Tensor | Dataset | Iterable, num_images: int, *, batch_size: int, seed: int) -> Iterable[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if isinstance(data, torch.Tensor) or _indexes_like_a_tensor(data):
        count = min(num_images, data.shape[0])
        index = torch.randperm(data.shape[0], generator=generator)[:count]
        return (data[index[start : start + batch_size]] for start in range(0, count, batch_size))
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        count = min(num_images, len(data))
        index = torch.randperm(len(data), generator=generator)[:count].tolist()
        loader = DataLoader(Subset(data, index), batch_size=batch_size, shuffle=False)
        return (_images_of(batch) for batch in loader)
    return (_images_of(batch) for batch in data)


def _indexes_like_a_tensor(data: object) -> bool:
    """An image store that is not a tensor but reads like one (``shape``, ``[index_tensor]``), e.g.
    :class:`supernet.evaluation.data.ImageBank`'s uint8 images."""
    return not isinstance(data, Dataset) and hasattr(data, "shape") and hasattr(data, "__getitem__")


def _images_of(batch: object) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"recalibrate_bn: expected batches of image tensors or (images, labels), got {type(batch).__name__}")
