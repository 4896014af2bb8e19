"""Batched image ops equal torchvision's tensor ops image by image, for given boxes and factors."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from supernet.data import batched_ops as ops

ATOL = 2e-6  # float32 rounding; a wrong kernel, factor or image pairing is off by 1e-2 and more
CROP_ATOL = 1e-5  # the weights of a shrinking crop add ~10 float32 terms in another order than PyTorch's


def _images(n: int = 12, side: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _pixels(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("size", "source"), [(32, (32, 32)), (16, (40, 28)), (24, (96, 80))])
def test_batched_crop_equals_torchvision_resized_crop_per_image(size: int, source: tuple[int, int]) -> None:
    """Enlarging and shrinking boxes (antialiased bicubic, as PIL), flips folded into the weights."""
    height, width = source
    n = 16
    generator = torch.Generator().manual_seed(1)
    h = torch.randint(4, height + 1, (n,), generator=generator)
    w = torch.randint(4, width + 1, (n,), generator=generator)
    top = (torch.rand(n, generator=generator) * (height - h + 1)).floor()
    left = (torch.rand(n, generator=generator) * (width - w + 1)).floor()
    flip = torch.rand(n, generator=generator) < 0.5
    pixels = _pixels(n, height, width)
    crops = ops.resized_crops(pixels, top=top, left=left, height=h.float(), width=w.float(), size=size, flip=flip)
    assert crops.shape == (n, 3, size, size) and crops.dtype == torch.float32
    for i in range(n):
        expected = TF.resized_crop(pixels[i].float() / 255, int(top[i]), int(left[i]), int(h[i]), int(w[i]), [size, size],
                                   InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
        if flip[i]:
            expected = TF.hflip(expected)
        torch.testing.assert_close(crops[i], expected, rtol=0, atol=CROP_ATOL, msg=f"image {i}")
    assert flip.any() and not flip.all()


def test_batched_crop_is_not_torch_default_bicubic() -> None:
    """The kernel is PIL's (a = -0.5), not F.interpolate's default a = -0.75: the test above can tell them apart."""
    pixels = _pixels(1, 16, 16)
    ours = ops.resized_crops(pixels, top=torch.zeros(1), left=torch.zeros(1), height=torch.full((1,), 10.0),
                             width=torch.full((1,), 10.0), size=32)
    other = torch.nn.functional.interpolate(pixels[:, :, :10, :10].float() / 255, size=(32, 32), mode="bicubic",
                                            align_corners=False).clamp(0, 1)
    assert (ours - other).abs().max() > 1e-2


def _ramp(height: int, width: int) -> torch.Tensor:
    """uint8 (1, 3, H, W) sampling f(u, v) = 0.2 + 0.5 u + 0.3 v at pixel centres (u, v in [0, 1])."""
    u = (torch.arange(height) + 0.5)[:, None] / height
    v = (torch.arange(width) + 0.5)[None, :] / width
    return (255 * (0.2 + 0.5 * u + 0.3 * v)).round().to(torch.uint8).expand(1, 3, height, width).contiguous()


def test_fractional_boxes_of_a_squeezed_image_cover_the_same_region() -> None:
    """A box drawn on a 40 x 24 image, mapped onto its 32 x 32 squeezed copy, crops the same part:
    bicubic reproduces a linear ramp, so both crops must sample f at the box's output centres."""
    box = torch.tensor([10.0, 4.0, 20.0, 16.0])  # top, left, height, width on the native 40 x 24 grid
    size = 8
    u = (box[0] + (torch.arange(size) + 0.5) * box[2] / size) / 40
    v = (box[1] + (torch.arange(size) + 0.5) * box[3] / size) / 24
    expected = 0.2 + 0.5 * u[:, None] + 0.3 * v[None, :]
    to_stored = torch.tensor([32 / 40, 32 / 24, 32 / 40, 32 / 24])
    for pixels, scale in ((_ramp(40, 24), torch.ones(4)), (_ramp(32, 32), to_stored)):
        top, left, height, width = (box * scale)[:, None]
        crop = ops.resized_crops(pixels, top=top, left=left, height=height, width=width, size=size)[0, 0]
        # interior outputs: at the box edges the kernel is cut off and renormalised, as in PIL
        torch.testing.assert_close(crop[1:-1, 1:-1], expected[1:-1, 1:-1], rtol=0, atol=4e-3)
    wrong = ops.resized_crops(_ramp(32, 32), top=box[0:1], left=box[1:2], height=box[2:3], width=box[3:4], size=size)
    assert (wrong[0, 0, 1:-1, 1:-1] - expected[1:-1, 1:-1]).abs().max() > 0.03  # unmapped boxes miss it


@pytest.mark.parametrize(("ours", "theirs", "low", "high"), [
    (ops.adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
    (ops.adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
    (ops.adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
    (ops.adjust_hue, TF.adjust_hue, -0.5, 0.5),
])
def test_photometric_ops_equal_torchvision_per_image(ours, theirs, low: float, high: float) -> None:
    images = _images()
    factors = low + (high - low) * torch.rand(len(images), generator=torch.Generator().manual_seed(2))
    result = ours(images.clone(), factors)
    for i in range(len(images)):
        torch.testing.assert_close(result[i], theirs(images[i], float(factors[i])), rtol=0, atol=ATOL, msg=f"image {i}")


def test_hue_keeps_grey_pixels_and_handles_the_range_ends() -> None:
    images = _images(4)
    images[0] = 0.3  # grey: no hue to turn
    images[1, :, :4] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # saturated red: hue 0
    factors = torch.tensor([0.5, -0.5, 0.5, 0.0])
    result = ops.adjust_hue(images.clone(), factors)
    torch.testing.assert_close(result[0], images[0], rtol=0, atol=ATOL)
    for i in range(4):
        torch.testing.assert_close(result[i], TF.adjust_hue(images[i], float(factors[i])), rtol=0, atol=ATOL)


def test_one_jitter_step_applies_each_images_own_op() -> None:
    images = _images(16)
    kinds = torch.arange(16) % 4  # brightness, contrast, saturation, none (hue is done apart)
    factors = 0.2 + 1.6 * torch.rand(16, generator=torch.Generator().manual_seed(4))
    result = ops.blend_jitter(images.clone(), kinds, factors)
    reference = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, lambda image, _: image]
    for i in range(16):
        expected = reference[int(kinds[i])](images[i], float(factors[i]))
        torch.testing.assert_close(result[i], expected, rtol=0, atol=ATOL, msg=f"image {i}, kind {int(kinds[i])}")
    assert torch.equal(result[3], images[3])  # an image without an op at this step is left bit for bit


def test_grayscale_solarize_and_blur_equal_torchvision_per_image() -> None:
    images = _images(10, side=40)
    chosen = torch.tensor([True, False] * 5)
    gray = ops.set_grayscale(images.clone(), chosen)
    solar = ops.solarize(images.clone(), chosen, 0.5)
    sigmas = 0.1 + 1.9 * torch.rand(10, generator=torch.Generator().manual_seed(5))
    blurred = ops.gaussian_blur(images, sigmas, 5)
    for i in range(10):
        grey = TF.rgb_to_grayscale(images[i], num_output_channels=3)
        torch.testing.assert_close(gray[i], grey if chosen[i] else images[i], rtol=0, atol=ATOL)
        torch.testing.assert_close(solar[i], TF.solarize(images[i], 0.5) if chosen[i] else images[i], rtol=0, atol=0)
        torch.testing.assert_close(blurred[i], TF.gaussian_blur(images[i], [5, 5], [float(sigmas[i])] * 2), rtol=0, atol=ATOL)
    assert not torch.allclose(blurred[0], TF.gaussian_blur(images[0], [5, 5], [float(sigmas[1])] * 2), atol=1e-3)
