"""View samplers: counts and shapes per kind, SSLight's crops and asymmetric views, data-specific
augmentation, normalisation, reproducibility."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from supernet.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VIEW_BUILDERS,
    ViewOptions,
    ViewSpec,
    blur_kernel_size,
    build_views,
    default_local_resolution,
    eval_pixels,
    eval_transform,
)

SSLIGHT = dict(num_local=6, global_scale=(0.3, 1.0), blur=(1.0, 0.1), local_blur=0.5, solarize=(0.0, 0.2),
               jitter=(0.4, 0.4, 0.2, 0.1))  # configs/views/sslight.yaml


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _steps(views: object) -> list[list[object]]:
    return [transform.transforms for transform, _ in views.groups]  # type: ignore[attr-defined]


def _applied(steps: list[object], kind: type) -> list[tuple[object, float]]:
    """(transform, probability) of every ``kind`` step, wrapped in RandomApply or not."""
    found = []
    for step in steps:
        if isinstance(step, transforms.RandomApply) and isinstance(step.transforms[0], kind):
            found.append((step.transforms[0], step.p))
        elif isinstance(step, kind):
            found.append((step, getattr(step, "p", 1.0)))
    return found


@pytest.mark.parametrize(("resolution", "source"), [(32, (28, 28)), (224, (300, 200))])
def test_two_crop_gives_two_views_at_resolution(resolution: int, source: tuple[int, int]) -> None:
    views, spec = build_views("two_crop", resolution)
    crops = views(_photo(*source))
    assert len(crops) == 2 and spec.num_global == 2
    assert all(crop.shape == (3, resolution, resolution) and crop.dtype == torch.float32 for crop in crops)
    assert not torch.equal(crops[0], crops[1])  # independently augmented


@pytest.mark.parametrize(("resolution", "local"), [(32, 16), (224, 128)])
def test_sslight_gives_globals_then_locals_at_128_224_of_the_side(resolution: int, local: int) -> None:
    views, spec = build_views("sslight", resolution, **SSLIGHT)
    crops = views(_photo(256, 192))
    assert [tuple(crop.shape) for crop in crops] == [(3, resolution, resolution)] * 2 + [(3, local, local)] * 6
    assert spec == ViewSpec("sslight", 2, 6, resolution, local)


def test_default_local_resolution_is_sslights_128_for_224() -> None:
    assert [default_local_resolution(side) for side in (28, 32, 64, 96, 224)] == [16, 16, 40, 56, 128]


def test_sslight_crop_scales_and_asymmetric_views_follow_its_code() -> None:
    views, _ = build_views("sslight", 224, **SSLIGHT)
    first, second, local = _steps(views)
    assert first[0].scale == (0.3, 1.0) and first[0].size == (224, 224)
    assert local[0].scale == (0.05, 0.3) and local[0].size == (128, 128)
    assert [p for _, p in _applied(first, transforms.GaussianBlur)] == [1.0]
    assert [p for _, p in _applied(second, transforms.GaussianBlur)] == [0.1]
    assert [p for _, p in _applied(local, transforms.GaussianBlur)] == [0.5]
    assert _applied(first, transforms.RandomSolarize) == [] and _applied(local, transforms.RandomSolarize) == []
    assert [p for _, p in _applied(second, transforms.RandomSolarize)] == [0.2]
    (jitter, p), = _applied(first, transforms.ColorJitter)
    assert p == 0.8 and jitter.saturation == (0.8, 1.2)  # strength 0.2


def test_blur_only_for_crops_of_at_least_64_px() -> None:
    (small, _) = _steps(build_views("two_crop", 32)[0])
    (large, _) = _steps(build_views("two_crop", 224)[0])
    assert _applied(small, transforms.GaussianBlur) == []
    ((blur, _),) = _applied(large, transforms.GaussianBlur)
    assert blur.kernel_size == (23, 23)
    assert [blur_kernel_size(side) for side in (64, 96, 224)] == [7, 9, 23]
    assert all(blur_kernel_size(side) % 2 == 1 for side in range(16, 512))


def test_digit_augmentation_keeps_the_digit_and_its_colours() -> None:
    views, _ = build_views("sslight", 32, ViewOptions(**SSLIGHT, flip=False, photometric=False, min_crop_scale=0.5))
    for steps in _steps(views)[:2]:
        assert steps[0].scale == (0.5, 1.0)  # the floor raises the global crop scale
        for kind in (transforms.RandomHorizontalFlip, transforms.ColorJitter, transforms.RandomGrayscale,
                     transforms.RandomSolarize):
            assert _applied(steps, kind) == [], kind
    grey = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).convert("RGB")
    crops = views(grey)
    assert all(torch.allclose(crop[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], crop[2] * IMAGENET_STD[2] + IMAGENET_MEAN[2],
                              atol=1e-5) for crop in crops)  # still grey: no colour was added


@pytest.mark.parametrize(("resolution", "source"), [(32, (28, 28)), (32, (50, 40)), (224, (300, 200))])
def test_eval_transform_shape(resolution: int, source: tuple[int, int]) -> None:
    tensor = eval_transform(resolution)(_photo(*source))
    assert tensor.shape == (3, resolution, resolution)
    assert eval_pixels(resolution)(_photo(*source)).dtype == torch.uint8


def test_eval_transform_normalises_with_imagenet_statistics() -> None:
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    tensor = eval_transform(32)(Image.new("RGB", (40, 40), mean_colour))
    assert tensor.abs().max() < 1.5 / 255 / min(IMAGENET_STD)
    white = eval_transform(32)(Image.new("RGB", (32, 32), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(white.mean(dim=(1, 2)), expected, atol=1e-5)
    photo = _photo(37, 41)  # uint8 storage then normalisation equals torchvision's ToTensor + Normalize
    reference = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                                     transforms.CenterCrop(32), transforms.ToTensor(),
                                     transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(photo)
    assert torch.equal(eval_transform(32)(photo), reference)


def test_views_are_reproducible_from_the_torch_seed() -> None:
    views, image = build_views("sslight", 32, **SSLIGHT)[0], _photo(48, 48)
    torch.manual_seed(7)
    first = views(image)
    torch.manual_seed(7)
    again = views(image)
    torch.manual_seed(8)
    other = views(image)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_views_pickle_for_dataloader_workers() -> None:
    views = pickle.loads(pickle.dumps(build_views("sslight", 32, **SSLIGHT)[0]))
    assert len(views(_photo(40, 40))) == 8


def test_build_views_returns_matching_spec() -> None:
    views, spec = build_views("two_crop", 32)
    assert spec == ViewSpec(name="two_crop", num_global=2, num_local=0, resolution=32, local_resolution=None)
    _, spec = build_views("sslight", 32, num_local=0)
    assert spec.local_resolution is None
    _, spec = build_views("sslight", 32, num_local=2, local_resolution=24)
    assert (spec.num_local, spec.local_resolution) == (2, 24)
    assert set(VIEW_BUILDERS) == {"two_crop", "sslight"}


def test_build_views_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="views.name") as error:
        build_views("multicrop", 32)
    assert "two_crop" in str(error.value) and "sslight" in str(error.value)
    with pytest.raises(ValueError, match="two_crop has no local crops"):
        build_views("two_crop", 32, num_local=6)
    with pytest.raises(ValueError, match="unknown option"):
        build_views("sslight", 32, num_locals=6)
    with pytest.raises(ValueError, match="resolution"):
        build_views("sslight", 0)
    with pytest.raises(ValueError, match="views.num_local"):
        build_views("sslight", 32, num_local=-1)
