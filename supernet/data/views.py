"""View sampling for self-supervised training, chosen by name (``configs/views/*.yaml``).

* ``two_crop``: two views per image, SimCLR/BYOL augmentations (Chen et al. ICML 2020; Grill et al.
  NeurIPS 2020), as in US3L's CIFAR recipe.
* ``sslight``: multi-crop tuned for small networks (SSLight, Liu et al. ICLR 2023): 2 global crops of
  scale [0.3, 1] and ``num_local`` local crops of scale [0.05, 0.3]; the loop weighs global-global
  terms by :data:`GLOBAL_GLOBAL_WEIGHT` and global-local terms by :data:`GLOBAL_LOCAL_WEIGHT`.

A view sampler maps one PIL image to a list of normalized tensors: ``num_global`` tensors of shape
(3, resolution, resolution) first, then ``num_local`` of shape (3, local_resolution,
local_resolution). Photometric augmentations are the same for every crop: colour jitter
(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, horizontal flip, and Gaussian blur (p = 0.5,
kernel ~10% of the crop side, odd) only for crops of at least 64 px, where blur still leaves
structure to learn from. Unlike DINO there is no solarization and no asymmetric blur.

Reproducibility: torchvision transforms draw from torch's global RNG. The training loop makes views
reproducible by seeding it: ``torch.manual_seed(seed)`` for ``num_workers=0``, and for worker
processes a ``DataLoader(..., generator=torch.Generator().manual_seed(seed))``, from which PyTorch
seeds each worker's torch RNG (``base_seed + worker_id``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image
from torch import Tensor
from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZE = transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
"""ImageNet channel statistics, used for every data set so that weights transfer between them."""

GLOBAL_GLOBAL_WEIGHT = 0.4
"""SSLight weight of the loss terms between two global views."""
GLOBAL_LOCAL_WEIGHT = 0.6
"""SSLight weight of the loss terms between a global (teacher) view and a local (student) view."""

_BICUBIC = transforms.InterpolationMode.BICUBIC
_BLUR_MIN_RESOLUTION = 64


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
    """Callable ``PIL image -> list of (3, side, side) tensors``, one augmentation pipeline per group.

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
    """SSLight local-crop side: 96/224 of ``resolution``, rounded to a multiple of 8, at least 16.

    224 -> 96, 96 -> 40, 32 -> 16, 28 -> 16.
    """
    scaled = resolution * 96 // 224
    return max(16, (scaled + 4) // 8 * 8)


def augmented_crop(resolution: int, scale: tuple[float, float]) -> transforms.Compose:
    """One random view: RandomResizedCrop(resolution, scale), colour jitter, grayscale, flip, blur
    (only at >= 64 px), ToTensor, ImageNet normalisation. Output (3, resolution, resolution)."""
    _check_side("resolution", resolution)
    steps: list[Any] = [
        transforms.RandomResizedCrop(resolution, scale=scale, interpolation=_BICUBIC),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        transforms.RandomHorizontalFlip(),
    ]
    if resolution >= _BLUR_MIN_RESOLUTION:
        blur = transforms.GaussianBlur(blur_kernel_size(resolution), sigma=(0.1, 2.0))
        steps.append(transforms.RandomApply([blur], p=0.5))
    steps += [transforms.ToTensor(), NORMALIZE]
    return transforms.Compose(steps)


def eval_transform(resolution: int) -> Callable[[Image.Image], Tensor]:
    """Deterministic evaluation transform: PIL image -> (3, resolution, resolution) tensor.

    Below 64 px: resize the shorter side to ``resolution`` and center-crop. From 64 px: the ImageNet
    convention, resize the shorter side to ``int(resolution * 256 / 224)`` then center-crop.
    """
    _check_side("resolution", resolution)
    resize = int(resolution * 256 / 224) if resolution >= 64 else resolution
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=_BICUBIC),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            NORMALIZE,
        ]
    )


def two_crop_views(resolution: int) -> Callable[[Image.Image], list[Tensor]]:
    """Two independently augmented views (SimCLR/BYOL), each (3, resolution, resolution).

    Crop scale (0.2, 1.0) up to 64 px (the CIFAR convention), (0.08, 1.0) above.
    """
    scale = (0.2, 1.0) if resolution <= 64 else (0.08, 1.0)
    return MultiCropViews([(augmented_crop(resolution, scale), 2)])


def sslight_views(
    resolution: int, *, num_local: int = 6, local_resolution: int | None = None
) -> Callable[[Image.Image], list[Tensor]]:
    """SSLight multi-crop (Liu et al. ICLR 2023): 2 global crops of scale (0.3, 1.0), shape
    (3, resolution, resolution), then ``num_local`` local crops of scale (0.05, 0.3), shape
    (3, local_resolution, local_resolution); ``local_resolution`` defaults to
    :func:`default_local_resolution` (224 -> 96, 32 -> 16)."""
    if isinstance(num_local, bool) or not isinstance(num_local, int) or num_local < 0:
        raise ValueError(f"views.num_local: {num_local!r}; expected a non-negative integer")
    if local_resolution is None:
        local_resolution = default_local_resolution(resolution)
    _check_side("views.local_resolution", local_resolution)
    groups = [(augmented_crop(resolution, (0.3, 1.0)), 2)]
    if num_local > 0:
        groups.append((augmented_crop(local_resolution, (0.05, 0.3)), num_local))
    return MultiCropViews(groups)


def _build_two_crop(
    resolution: int, *, num_local: int = 0, local_resolution: int | None = None
) -> tuple[Callable[[Image.Image], list[Tensor]], ViewSpec]:
    if num_local != 0 or local_resolution is not None:
        raise ValueError(
            f"views: two_crop has no local crops (got num_local={num_local}, "
            f"local_resolution={local_resolution}); expected num_local=0 and local_resolution=null, "
            "or views=sslight"
        )
    return two_crop_views(resolution), ViewSpec("two_crop", 2, 0, resolution, None)


def _build_sslight(
    resolution: int, *, num_local: int = 6, local_resolution: int | None = None
) -> tuple[Callable[[Image.Image], list[Tensor]], ViewSpec]:
    views = sslight_views(resolution, num_local=num_local, local_resolution=local_resolution)
    if num_local == 0:
        local_resolution = None
    elif local_resolution is None:
        local_resolution = default_local_resolution(resolution)
    return views, ViewSpec("sslight", 2, num_local, resolution, local_resolution)


VIEW_BUILDERS: dict[str, Callable[..., tuple[Callable[[Image.Image], list[Tensor]], ViewSpec]]] = {
    "two_crop": _build_two_crop,
    "sslight": _build_sslight,
}

_BUILD_OPTIONS = ("num_local", "local_resolution")


def build_views(
    name: str, resolution: int, **kwargs: Any
) -> tuple[Callable[[Image.Image], list[Tensor]], ViewSpec]:
    """The view sampler ``name`` (a key of :data:`VIEW_BUILDERS`) at ``resolution`` and its spec.

    ``kwargs``: ``num_local`` and ``local_resolution`` (``two_crop`` accepts only 0 and None).

    Example::

        views, spec = build_views("sslight", 32)
        crops = views(image)  # 2 x (3, 32, 32), then 6 x (3, 16, 16)
    """
    if name not in VIEW_BUILDERS:
        valid = ", ".join(VIEW_BUILDERS)
        raise ValueError(f"views.name: {name!r} is not a view sampler; expected one of: {valid}")
    unknown = sorted(set(kwargs) - set(_BUILD_OPTIONS))
    if unknown:
        raise ValueError(
            f"views: unknown option(s) {', '.join(unknown)}; expected only: {', '.join(_BUILD_OPTIONS)}"
        )
    _check_side("data.resolution", resolution)
    return VIEW_BUILDERS[name](resolution, **kwargs)


__all__ = [
    "GLOBAL_GLOBAL_WEIGHT",
    "GLOBAL_LOCAL_WEIGHT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZE",
    "VIEW_BUILDERS",
    "MultiCropViews",
    "ViewSpec",
    "augmented_crop",
    "blur_kernel_size",
    "build_views",
    "default_local_resolution",
    "eval_transform",
    "sslight_views",
    "two_crop_views",
]
