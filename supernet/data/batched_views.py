"""The views of :mod:`supernet.data.views`, made for a whole batch at once on the images' device.

Same :class:`~supernet.data.views.ViewPlan` as the PIL path, same per-image distributions:

* crop: torchvision ``RandomResizedCrop.get_params`` vectorised (area scale uniform in ``scale``,
  log-uniform aspect ratio in (3/4, 4/3), up to 10 attempts per image, the first that fits wins,
  else the centre-crop fallback; integer boxes and offsets), bicubic with antialiasing
  (:func:`~supernet.data.batched_ops.resized_crops`); a flip with probability 0.5;
* ``ColorJitter`` with probability ``jitter_prob``: uniform factors (brightness, contrast,
  saturation in [max(0, 1 - s), 1 + s], hue in [-s, s]) applied in a random order per image, as
  ``ColorJitter.get_params`` draws it (a uniform permutation of the four); a strength of 0 skips
  its op, as torchvision does;
* grayscale with ``grayscale_prob``; Gaussian blur (crops >= 64 px) with sigma uniform in [0.1, 2]
  and the kernel of :func:`~supernet.data.views.blur_kernel_size`; solarisation at 128/255;
  ImageNet normalisation.

Every parameter is drawn on the host from an explicit ``torch.Generator`` for the whole global
batch, then the rank's rows are taken and moved to the device (non-blocking), so every
data-parallel rank draws the same numbers and CUDA never waits for the host. Subsets (the images
whose hue turns at a given step, the images to blur) are known on the host, so no boolean
indexing reads the device back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from supernet.data import batched_ops as ops
from supernet.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SOLARIZE_THRESHOLD,
    CropGroup,
    ViewOptions,
    ViewPlan,
    blur_applies,
    blur_kernel_size,
)

__all__ = ["ASPECT_RATIO", "BLUR_SIGMA", "BatchedViews", "ViewParams", "crop_boxes", "draw_view_params", "to_device",
           "views_working_bytes"]

ASPECT_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default
BLUR_SIGMA = (0.1, 2.0)  # GaussianBlur's sigma range in the PIL path
_ATTEMPTS = 10  # RandomResizedCrop.get_params tries this many boxes before its fallback
_SOLARIZE = (SOLARIZE_THRESHOLD - 0.5) / 255  # PIL compares the rounded value with 128: x * 255 >= 127.5


def crop_boxes(generator: torch.Generator, sizes: Tensor, scale: tuple[float, float],
               ratio: tuple[float, float] = ASPECT_RATIO) -> Tensor:
    """RandomResizedCrop boxes for images of ``sizes`` (n, 2) (height, width): (n, 4) int64 (top, left, h, w).

    torchvision's ``get_params``, vectorised over images and attempts (float64 on the host).
    """
    n = sizes.shape[0]
    height, width = sizes[:, 0:1].to(torch.float64), sizes[:, 1:2].to(torch.float64)
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    area = height * width * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, _ATTEMPTS, generator=generator, dtype=torch.float64))
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(n, _ATTEMPTS, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(area * aspect))  # round half to even, as Python's round
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first attempt that fits
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    # The fallback: the whole image, its aspect clipped into ``ratio``, centred.
    in_ratio = width / height
    fallback_w = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    fallback_h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
    offsets = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, torch.floor(offsets[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(offsets[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


@dataclass(frozen=True)
class ViewParams:
    """The random parameters of one view for n images (host tensors until :meth:`to`).

    ``boxes``: (n, 4) float (top, left, height, width) in stored pixels; ``order``: (n, 4) the
    op at each jitter step (0 brightness, 1 contrast, 2 saturation, 3 hue; ColorJitter's
    ``fn_idx``); ``factors``: (n, 4) brightness, contrast, saturation, hue; the rest (n,).
    """

    boxes: Tensor
    flip: Tensor
    jitter: Tensor
    order: Tensor
    factors: Tensor
    grayscale: Tensor
    blur: Tensor
    sigma: Tensor
    solarize: Tensor

    def rows(self, index: Tensor | slice) -> ViewParams:
        """The parameters of the images ``index`` (a rank's shard of the global batch)."""
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device) -> ViewParams:
        return ViewParams(**{f.name: to_device(getattr(self, f.name), device) for f in fields(self)})


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """A host tensor on ``device`` without making the host wait: pinned, then a non-blocking copy."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def draw_view_params(generator: torch.Generator, *, sizes: Tensor, stored: tuple[int, int], group: CropGroup,
                     options: ViewOptions) -> ViewParams:
    """Every random choice of one view of ``group`` for images of native ``sizes`` (n, 2), on the host.

    Boxes are drawn in native pixels (the PIL path's geometry) and mapped onto the ``stored``
    (height, width) grid the images are kept at.
    """
    n = sizes.shape[0]

    def chance(probability: float, applies: bool = True) -> Tensor:
        draws = torch.rand(n, generator=generator)
        return draws < probability if applies else torch.zeros(n, dtype=torch.bool)

    boxes = crop_boxes(generator, sizes, group.scale).to(torch.float64)
    to_stored = torch.tensor(stored, dtype=torch.float64) / sizes.to(torch.float64)  # (n, 2) rows, columns
    boxes = boxes * torch.cat([to_stored, to_stored], dim=1)
    flip = chance(0.5, options.flip)
    jitter = chance(options.jitter_prob, options.photometric)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)  # a uniform permutation per image
    brightness, contrast, saturation, hue = options.jitter
    low = torch.tensor([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue])
    high = torch.tensor([1 + brightness, 1 + contrast, 1 + saturation, hue])
    factors = low + (high - low) * torch.rand(n, 4, generator=generator)
    gray = chance(options.grayscale_prob, options.photometric)
    blur = chance(group.blur, blur_applies(group.resolution, group.blur))
    sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(n, generator=generator)
    solarize = chance(group.solarize, options.photometric and group.solarize > 0)
    return ViewParams(boxes=boxes.to(torch.float32), flip=flip, jitter=jitter, order=order, factors=factors,
                      grayscale=gray, blur=blur, sigma=sigma, solarize=solarize)


def views_working_bytes(stored: tuple[int, int], *, images: int, sides: list[int]) -> int:
    """Device memory that making one batch's views takes beside the store, at its peak: the batch gathered from
    the store (uint8), then for each view in turn the whole stored images as float32 and the column pass of the
    crop (:func:`~supernet.data.batched_ops.resized_crops` resamples dense per-image matrices over the full stored
    side, whatever the crop), or the row pass with its output, while the views made before it are held, with
    room for the photometric ops' temporaries (two of a view's size).

    ``images``: this process's share of the batch; ``sides``: each view's output side. 256 images stored at
    1024 x 1024 px cost about 4 GB for a 224-px view (3.2 GB of it the float copy).
    """
    height, width = stored
    floats = 4
    gathered = images * 3 * height * width
    held, peak = 0, 0
    for side in sides:
        columns = images * (3 * height * width + side * width + 3 * height * side) * floats
        rows = images * (3 * height * side + side * height + 3 * side * side) * floats
        photometric = 2 * images * 3 * side * side * floats
        peak = max(peak, held + max(columns, rows, photometric))
        held += images * 3 * side * side * floats
    return gathered + max(peak, held)


class BatchedViews:
    """Make the views of a :class:`~supernet.data.views.ViewPlan` from a batch of stored images.

    ``views(pixels, params)``: uint8 (n, 3, H, W) on any device and one :class:`ViewParams` per
    view (host tensors) -> list of normalised float32 (n, 3, side, side) tensors on that device,
    ``num_global`` globals first, then the locals (the order of the PIL path's lists).
    """

    def __init__(self, *, plan: ViewPlan) -> None:
        self.plan = plan
        self.groups = [group for group in plan.groups for _ in range(group.count)]  # one per view
        self._constants: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def draw(self, generators: list[torch.Generator], *, sizes: Tensor, stored: tuple[int, int]) -> list[ViewParams]:
        """Parameters of every view (generator ``v`` draws view ``v``) for images of ``sizes`` (n, 2)."""
        return [draw_view_params(generator, sizes=sizes, stored=stored, group=group, options=self.plan.options)
                for generator, group in zip(generators, self.groups, strict=True)]

    def __call__(self, pixels: Tensor, params: list[ViewParams]) -> list[Tensor]:
        return [self.view(pixels, p, group) for p, group in zip(params, self.groups, strict=True)]

    def view(self, pixels: Tensor, host: ViewParams, group: CropGroup) -> Tensor:
        """One view of every image: crop and flip, colour jitter, grayscale, blur, solarise, normalise."""
        device = pixels.device
        p = host.to(device)
        longest = host.boxes[:, 2:].amax(dim=0) / group.resolution  # read on the host: no device sync
        images = ops.resized_crops(pixels, top=p.boxes[:, 0], left=p.boxes[:, 1], height=p.boxes[:, 2],
                                   width=p.boxes[:, 3], size=group.resolution, flip=p.flip,
                                   max_scale=(float(longest[0]), float(longest[1])))
        options = self.plan.options
        if options.photometric:
            images = self._jitter(images, host, p)
            images = ops.set_grayscale(images, p.grayscale)
        rows = torch.nonzero(host.blur)[:, 0]  # host tensors: no device read-back
        if len(rows):
            index = to_device(rows, device)
            blurred = ops.gaussian_blur(images.index_select(0, index), p.sigma.index_select(0, index),
                                        blur_kernel_size(group.resolution))
            images.index_copy_(0, index, blurred)
        if bool(host.solarize.any()):
            images = ops.solarize(images, p.solarize, _SOLARIZE)
        mean, std = self._normalisation(device)
        return ops.normalize(images, mean, std)

    def _jitter(self, images: Tensor, host: ViewParams, p: ViewParams) -> Tensor:
        """ColorJitter's four steps; at each, every jittered image takes the op its order names."""
        strengths = self.plan.options.jitter
        for step in range(4):
            kinds = torch.where(p.jitter, p.order[:, step], torch.full_like(p.order[:, step], 3))
            factors = p.factors.gather(1, kinds.clamp(max=2)[:, None])[:, 0]
            images = ops.blend_jitter(images, kinds, factors)
            if strengths[3] > 0:  # hue 0 is no op in ColorJitter (and the HSV round trip is not exact)
                rows = torch.nonzero(host.jitter & (host.order[:, step] == 3))[:, 0]
                if len(rows):
                    index = to_device(rows, images.device)
                    turned = ops.adjust_hue(images.index_select(0, index), p.factors[:, 3].index_select(0, index))
                    images.index_copy_(0, index, turned)
        return images

    def _normalisation(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._constants:
            self._constants[device] = (torch.tensor(IMAGENET_MEAN).view(3, 1, 1).to(device),
                                       torch.tensor(IMAGENET_STD).view(3, 1, 1).to(device))
        return self._constants[device]
