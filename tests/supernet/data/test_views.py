"""View samplers: counts and shapes per kind, SSLight crop scales, normalisation, reproducibility."""

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
    ViewSpec,
    blur_kernel_size,
    build_views,
    default_local_resolution,
    eval_transform,
    sslight_views,
    two_crop_views,
)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _steps(views: object) -> list[list[object]]:
    return [transform.transforms for transform, _ in views.groups]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("resolution", "source"), [(32, (28, 28)), (224, (300, 200))])
def test_two_crop_gives_two_views_at_resolution(resolution: int, source: tuple[int, int]) -> None:
    views = two_crop_views(resolution)
    crops = views(_photo(*source))
    assert len(crops) == 2
    assert all(crop.shape == (3, resolution, resolution) and crop.dtype == torch.float32 for crop in crops)
    assert not torch.equal(crops[0], crops[1])  # independently augmented


@pytest.mark.parametrize(("resolution", "local"), [(32, 16), (224, 96)])
def test_sslight_gives_globals_then_locals(resolution: int, local: int) -> None:
    crops = sslight_views(resolution)(_photo(256, 192))
    assert [tuple(crop.shape) for crop in crops] == [(3, resolution, resolution)] * 2 + [(3, local, local)] * 6


def test_sslight_custom_local_count_and_resolution() -> None:
    crops = sslight_views(32, num_local=3, local_resolution=24)(_photo(40, 40))
    assert [crop.shape[-1] for crop in crops] == [32, 32, 24, 24, 24]
    assert len(sslight_views(32, num_local=0)(_photo(40, 40))) == 2


def test_sslight_crop_scales_follow_the_paper() -> None:
    global_steps, local_steps = _steps(sslight_views(224))
    assert global_steps[0].scale == (0.3, 1.0) and global_steps[0].size == (224, 224)
    assert local_steps[0].scale == (0.05, 0.3) and local_steps[0].size == (96, 96)


def test_blur_only_for_crops_of_at_least_64_px() -> None:
    def blurs(steps: list[object]) -> list[transforms.GaussianBlur]:
        applied = [step.transforms[0] for step in steps if isinstance(step, transforms.RandomApply)]
        return [step for step in applied if isinstance(step, transforms.GaussianBlur)]

    (small,) = _steps(two_crop_views(32))
    (large,) = _steps(two_crop_views(224))
    assert blurs(small) == []
    (blur,) = blurs(large)
    assert blur.kernel_size == (23, 23)
    assert [blur_kernel_size(side) for side in (64, 96, 224)] == [7, 9, 23]
    assert all(blur_kernel_size(side) % 2 == 1 for side in range(16, 512))


def test_default_local_resolution() -> None:
    assert [default_local_resolution(side) for side in (28, 32, 64, 96, 224)] == [16, 16, 24, 40, 96]


@pytest.mark.parametrize(("resolution", "source"), [(32, (28, 28)), (32, (50, 40)), (224, (300, 200))])
def test_eval_transform_shape(resolution: int, source: tuple[int, int]) -> None:
    tensor = eval_transform(resolution)(_photo(*source))
    assert tensor.shape == (3, resolution, resolution)


def test_eval_transform_normalises_with_imagenet_statistics() -> None:
    mean_colour = tuple(round(255 * m) for m in IMAGENET_MEAN)
    tensor = eval_transform(32)(Image.new("RGB", (40, 40), mean_colour))
    assert tensor.abs().max() < 1.5 / 255 / min(IMAGENET_STD)
    white = eval_transform(32)(Image.new("RGB", (32, 32), (255, 255, 255)))
    expected = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(white.mean(dim=(1, 2)), expected, atol=1e-5)


def test_views_are_reproducible_from_the_torch_seed() -> None:
    views, image = sslight_views(32), _photo(48, 48)
    torch.manual_seed(7)
    first = views(image)
    torch.manual_seed(7)
    again = views(image)
    torch.manual_seed(8)
    other = views(image)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_views_pickle_for_dataloader_workers() -> None:
    views = pickle.loads(pickle.dumps(sslight_views(32)))
    assert len(views(_photo(40, 40))) == 8


def test_build_views_returns_matching_spec() -> None:
    views, spec = build_views("sslight", 224)
    assert spec == ViewSpec(name="sslight", num_global=2, num_local=6, resolution=224, local_resolution=96)
    assert len(views(_photo(256, 256))) == spec.num_global + spec.num_local
    views, spec = build_views("two_crop", 32, num_local=0, local_resolution=None)
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
