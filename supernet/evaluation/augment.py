"""Training augmentation of linear evaluation, applied to a batch of uint8 images in one call.

Random-resized crop and horizontal flip (torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``,
the augmentation of SimCLR / MoCo / DINO linear evaluation), drawn per image from an explicit
generator and applied to a whole (B, 3, H, W) uint8 batch by one affine ``grid_sample`` (bilinear),
so an :class:`~supernet.evaluation.data.ImageBank` is augmented a batch at a time in the process that
trains, with no DataLoader workers and no float copy of the whole set.

The images are the evaluation crops the bank holds (:func:`supernet.data.views.eval_pixels`), so the
crops come from those: the whole image at 32 px (CIFAR, digits), the central 224 of the 256-px resize
at 224 px, where torchvision's pipeline would crop the full decoded image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from supernet.data.views import normalize_pixels

__all__ = ["crop_boxes", "random_resized_crop", "resized_crops"]

_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params


def crop_boxes(
    count: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator,
) -> torch.Tensor:
    """(count, 4) crop boxes ``top, left, crop_height, crop_width`` as RandomResizedCrop draws them.

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``; the first of 10
    attempts that fits the image is kept, else the whole image (torchvision falls back to a
    ratio-clamped center crop, which for square images is the whole image).
    """
    area = float(height * width)
    target = area * torch.empty(count, _ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.empty(count, _ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    crop_w = (target * aspect).sqrt().round().long()
    crop_h = (target / aspect).sqrt().round().long()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.to(torch.int8).argmax(dim=1)  # index of the first fitting attempt (0 when none fits)
    rows = torch.arange(count)
    found = fits.any(dim=1)
    crop_h = torch.where(found, crop_h[rows, first], torch.full((count,), height))
    crop_w = torch.where(found, crop_w[rows, first], torch.full((count,), width))
    top = (torch.rand(count, generator=generator) * (height - crop_h + 1)).floor().long()
    left = (torch.rand(count, generator=generator) * (width - crop_w + 1)).floor().long()
    return torch.stack([top, left, crop_h, crop_w], dim=1)


def random_resized_crop(
    pixels: torch.Tensor,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    size: int | None = None,
) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> normalised float32 (B, 3, size, size), each randomly cropped,
    resized (bilinear) and, with ``flip``, mirrored with probability 0.5.

    ``size`` defaults to H (square banks). Random draws come from ``generator`` only (a CPU
    generator; the pixels may live on any device).

    >>> g = torch.Generator().manual_seed(0)
    >>> random_resized_crop(torch.zeros(4, 3, 16, 16, dtype=torch.uint8), generator=g).shape
    torch.Size([4, 3, 16, 16])
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"random_resized_crop: expected uint8 (B, 3, H, W) pixels, got {pixels.dtype} "
                         f"{tuple(pixels.shape)}")
    count, _, height, width = pixels.shape
    boxes = crop_boxes(count, height, width, scale=scale, ratio=ratio, generator=generator)
    mirror = torch.rand(count, generator=generator) < 0.5 if flip else torch.zeros(count, dtype=torch.bool)
    return resized_crops(pixels, boxes, mirror=mirror, size=size or height)


def resized_crops(pixels: torch.Tensor, boxes: torch.Tensor, *, mirror: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> normalised float32 (B, 3, size, size): image i's box
    ``boxes[i] = (top, left, crop_height, crop_width)`` resized (bilinear, pixel centres aligned as in
    ``F.interpolate(align_corners=False)``) and mirrored where ``mirror[i]`` (B,) is true.

    The box is sampled in the whole image, so within half an output pixel of its edge the bilinear
    weights reach the neighbouring source pixels (torchvision crops first and clamps there).
    """
    count, _, height, width = pixels.shape
    top, left, crop_h, crop_w = boxes.T.double()
    # grid_sample's normalised coordinates (align_corners=False): output x in [-1, 1] maps to the crop
    # [left, left + crop_w) of the source; a negative x scale mirrors it
    theta = torch.zeros(count, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(mirror.cpu(), -1.0, 1.0).double() * crop_w / width
    theta[:, 0, 2] = (2 * left + crop_w) / width - 1
    theta[:, 1, 1] = crop_h / height
    theta[:, 1, 2] = (2 * top + crop_h) / height - 1
    images = normalize_pixels(pixels)
    grid = F.affine_grid(theta.to(images), [count, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
