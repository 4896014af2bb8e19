"""View sampling for self-supervised training, chosen by name (``configs/views/*.yaml``).

* ``two_crop``: two views per image with SimCLR/BYOL augmentations (Chen et al. ICML 2020; Grill et
  al. NeurIPS 2020), as in US3L's CIFAR recipe: crop scale (0.2, 1) up to 64 px, (0.08, 1) above.
* ``sslight``: multi-crop tuned for small networks (SSLight, Liu et al. ICLR 2023, its
  ``dino_cnn_sslight.yaml``): 2 global crops of scale (0.3, 1) and 6 local crops of scale
  (0.05, 0.3) at 128/224 of the global side; blur with probability 1.0 / 0.1 on the two global views
  and 0.5 on the locals, solarisation 0.2 on the second global view only, colour jitter
  (0.4, 0.4, 0.2, 0.1). The loop weighs global-global terms 0.4 and global-local terms 0.6.

A view sampler maps one PIL image to a list of normalized tensors: ``num_global`` tensors of shape
(3, resolution, resolution) first, then ``num_local`` of shape (3, local_resolution,
local_resolution). :class:`ViewOptions` holds every knob; a data set may switch off what does
not suit it (``data.augment``: digits are neither flipped nor colour-jittered). Gaussian blur
(kernel ~10% of the crop side) applies only to crops of at least 64 px, where blur still leaves
structure to learn from (US3L and Krishna et al. use none on CIFAR).

A sampler is first a :class:`ViewPlan` (:func:`plan_views`): its crop groups, options and spec.
:func:`build_views` turns a plan into PIL transforms (``data.pipeline=loader``);
:mod:`supernet.data.batched_views` makes the same views for whole batches on the training device.

Reproducibility: torchvision transforms draw from torch's global RNG. The training loop makes views
reproducible by seeding it per (seed, epoch, image) (:mod:`supernet.data.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE",
    "VIEW_BUILDERS",
    "SOLARIZE_THRESHOLD",
    "CropGroup",
    "MultiCropViews",
    "ViewOptions",
    "ViewPlan",
    "ViewSpec",
    "augmented_crop",
    "blur_applies",
    "blur_kernel_size",
    "build_views",
    "default_local_resolution",
    "eval_pixels",
    "eval_transform",
    "normalize_pixels",
    "plan_views",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
"""ImageNet channel statistics, used for every data set so that weights transfer between them."""

_BICUBIC = transforms.InterpolationMode.BICUBIC
_BLUR_MIN_RESOLUTION = 64
SOLARIZE_THRESHOLD = 128  # RandomSolarize inverts pixels >= 128 of 255
SSLIGHT_LOCAL_RATIO = 128 / 224  # SSLight's local crops: 128 px for 224-px globals (DINO's default is 96)


@dataclass(frozen=True)
class ViewOptions:
    """Every augmentation knob of a view sampler; ``None`` means the sampler's own default."""

    num_local: int = 0
    local_resolution: int | None = None  # None: 128/224 of the global side (SSLight), multiple of 8, >= 16
    global_scale: tuple[float, float] | None = None  # None: two_crop (0.2, 1) / (0.08, 1); sslight (0.3, 1)
    local_scale: tuple[float, float] = (0.05, 0.3)
    min_crop_scale: float | None = None  # a data set's floor on the global crop scale (digits keep the digit)
    flip: bool = True
    photometric: bool = True  # colour jitter, grayscale and solarisation; off for data where colour means nothing
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur: tuple[float, float] = (0.5, 0.5)  # probability on global view 1 and 2 (crops >= 64 px only)
    local_blur: float = 0.5
    solarize: tuple[float, float] = (0.0, 0.0)  # probability on global view 1 and 2


@dataclass(frozen=True)
class ViewSpec:
    """What a view sampler returns per image: ``num_global`` crops at ``resolution`` then
    ``num_local`` crops at ``local_resolution`` (None when there are none)."""

    name: str
    num_global: int
    num_local: int
    resolution: int
    local_resolution: int | None


class MultiCropViews:
    """Callable ``PIL image -> list of (3, side, side) tensors``, one pipeline per view (group).

    A class, not a closure, so that DataLoader workers can receive it by pickling.
    """

    def __init__(self, groups: list[tuple[Callable[[Image.Image], Tensor], int]]) -> None:
        self.groups = groups

    def __call__(self, image: Image.Image) -> list[Tensor]:
        return [transform(image) for transform, count in self.groups for _ in range(count)]

    def __repr__(self) -> str:
        parts = ", ".join(f"{count} x {transform}" for transform, count in self.groups)
        return f"{type(self).__name__}({parts})"


def _check_side(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: {value!r}; expected a positive number of pixels")
    return value


def blur_kernel_size(resolution: int) -> int:
    """Gaussian blur kernel side for crops of ``resolution`` px: ~10% of it, odd (224 -> 23)."""
    kernel = max(3, int(0.1 * resolution))
    return kernel if kernel % 2 == 1 else kernel + 1


def default_local_resolution(resolution: int) -> int:
    """SSLight's local-crop side: 128/224 of ``resolution``, rounded to a multiple of 8, at least 16.

    224 -> 128, 96 -> 56, 32 -> 16.
    """
    scaled = resolution * SSLIGHT_LOCAL_RATIO
    return max(16, int(scaled + 4) // 8 * 8)


def augmented_crop(resolution: int, scale: tuple[float, float], options: ViewOptions, *, blur: float,
                   solarize: float) -> transforms.Compose:
    """One random view: RandomResizedCrop(resolution, scale), then (per ``options``) colour jitter,
    grayscale, flip, blur with probability ``blur`` (only at >= 64 px), solarisation with probability
    ``solarize``, ToTensor, ImageNet normalisation. Output (3, resolution, resolution)."""
    _check_side("resolution", resolution)
    steps: list[Any] = [transforms.RandomResizedCrop(resolution, scale=scale, interpolation=_BICUBIC)]
    if options.photometric:
        steps += [transforms.RandomApply([transforms.ColorJitter(*options.jitter)], p=options.jitter_prob),
                  transforms.RandomGrayscale(p=options.grayscale_prob)]
    if options.flip:
        steps.append(transforms.RandomHorizontalFlip())
    if blur_applies(resolution, blur):
        steps.append(transforms.RandomApply([transforms.GaussianBlur(blur_kernel_size(resolution), sigma=(0.1, 2.0))],
                                            p=blur))
    if solarize > 0 and options.photometric:
        steps.append(transforms.RandomSolarize(threshold=SOLARIZE_THRESHOLD, p=solarize))
    steps += [transforms.ToTensor(), NORMALIZE]
    return transforms.Compose(steps)


def _global_scale(options: ViewOptions, default: tuple[float, float]) -> tuple[float, float]:
    low, high = options.global_scale or default
    if options.min_crop_scale is not None:
        low = max(low, options.min_crop_scale)
    return (low, high)


@dataclass(frozen=True)
class CropGroup:
    """``count`` views drawn alike: RandomResizedCrop(resolution, scale) and the options' other
    augmentations, blur with probability ``blur`` (only at >= 64 px), solarisation ``solarize``.

    The PIL path (:func:`augmented_crop`) and the batched path (:mod:`supernet.data.batched_views`)
    are both built from these, so the two cannot disagree on what a view is.
    """

    resolution: int
    scale: tuple[float, float]
    blur: float
    solarize: float
    count: int = 1


@dataclass(frozen=True)
class ViewPlan:
    """A view sampler as data: its crop groups (globals first, then locals), options and spec."""

    groups: tuple[CropGroup, ...]
    options: ViewOptions
    spec: ViewSpec


def blur_applies(resolution: int, probability: float) -> bool:
    """Whether a view at ``resolution`` px is ever blurred (crops under 64 px never are)."""
    return probability > 0 and resolution >= _BLUR_MIN_RESOLUTION


def _plan_two_crop(resolution: int, options: ViewOptions) -> ViewPlan:
    if options.num_local != 0:
        raise ValueError(f"views: two_crop has no local crops (got num_local={options.num_local}); expected "
                         "num_local=0, or views=sslight")
    scale = _global_scale(options, (0.2, 1.0) if resolution <= 64 else (0.08, 1.0))
    groups = tuple(CropGroup(resolution, scale, options.blur[v], options.solarize[v]) for v in range(2))
    return ViewPlan(groups, options, ViewSpec("two_crop", 2, 0, resolution, None))


def _plan_sslight(resolution: int, options: ViewOptions) -> ViewPlan:
    if options.num_local < 0:
        raise ValueError(f"views.num_local: {options.num_local!r}; expected a non-negative integer")
    scale = _global_scale(options, (0.3, 1.0))
    groups = [CropGroup(resolution, scale, options.blur[v], options.solarize[v]) for v in range(2)]
    local = None
    if options.num_local > 0:
        local = _check_side("views.local_resolution", options.local_resolution or default_local_resolution(resolution))
        groups.append(CropGroup(local, options.local_scale, options.local_blur, 0.0, options.num_local))
    return ViewPlan(tuple(groups), options, ViewSpec("sslight", 2, options.num_local, resolution, local))


VIEW_BUILDERS: dict[str, Callable[[int, ViewOptions], ViewPlan]] = {
    "two_crop": _plan_two_crop,
    "sslight": _plan_sslight,
}


def plan_views(name: str, resolution: int, options: ViewOptions | None = None, **changes: Any) -> ViewPlan:
    """The view sampler ``name`` (a key of :data:`VIEW_BUILDERS`) at ``resolution`` as a :class:`ViewPlan`.

    ``changes`` replace fields of ``options`` (default :class:`ViewOptions`).
    """
    if name not in VIEW_BUILDERS:
        raise ValueError(f"views.name: {name!r} is not a view sampler; expected one of: {', '.join(VIEW_BUILDERS)}")
    _check_side("data.resolution", resolution)
    try:
        options = replace(options or ViewOptions(), **changes)
    except TypeError:
        unknown = sorted(set(changes) - set(ViewOptions.__dataclass_fields__))
        raise ValueError(f"views: unknown option(s) {', '.join(unknown)}; expected fields of ViewOptions") from None
    return VIEW_BUILDERS[name](resolution, options)


def build_views(name: str, resolution: int, options: ViewOptions | None = None, **changes: Any) -> tuple[MultiCropViews, ViewSpec]:
    """The PIL view sampler ``name`` at ``resolution`` and its spec (arguments as :func:`plan_views`).

    Example::

        views, spec = build_views("sslight", 32, num_local=6)
        crops = views(image)  # 2 x (3, 32, 32), then 6 x (3, 16, 16)
    """
    plan = plan_views(name, resolution, options, **changes)
    groups = [(augmented_crop(g.resolution, g.scale, plan.options, blur=g.blur, solarize=g.solarize), g.count)
              for g in plan.groups]
    return MultiCropViews(groups), plan.spec


# -- evaluation -----------------------------------------------------------------------------------
def eval_pixels(resolution: int) -> Callable[[Image.Image], Tensor]:
    """Deterministic evaluation crop: PIL image -> (3, resolution, resolution) uint8 tensor.

    Below 64 px: resize the shorter side to ``resolution`` and center-crop. From 64 px: the ImageNet
    convention, resize the shorter side to ``int(resolution * 256 / 224)`` then center-crop.
    Evaluation images are held in this form (a quarter of float32's memory) and normalised per
    batch with :func:`normalize_pixels`.
    """
    _check_side("resolution", resolution)
    resize = int(resolution * 256 / 224) if resolution >= 64 else resolution
    return transforms.Compose([
        transforms.Resize(resize, interpolation=_BICUBIC),
        transforms.CenterCrop(resolution),
        transforms.PILToTensor(),
    ])


def normalize_pixels(pixels: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 scaled to [0, 1] and normalised with the ImageNet statistics.

    The same arithmetic as ``ToTensor`` then :data:`NORMALIZE`, so both give identical values.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return pixels.to(torch.float32).div(255).sub(mean).div(std)


def eval_transform(resolution: int) -> Callable[[Image.Image], Tensor]:
    """:func:`eval_pixels` then :func:`normalize_pixels`: PIL image -> (3, R, R) float32 tensor."""
    pixels = eval_pixels(resolution)
    return lambda image: normalize_pixels(pixels(image))
