"""Image operations on whole batches with one parameter per image, on whatever device the batch is.

Each op equals, image by image, the torchvision tensor op the PIL view pipeline stands for
(``torchvision.transforms.functional``: ``resized_crop`` with bicubic antialiasing, ``hflip``,
``adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``,
``rgb_to_grayscale``, ``gaussian_blur``, ``solarize``), up to float rounding; but where torchvision
takes one Python number per call, these take a tensor of ``n`` factors and never read them back on
the host, so a CUDA batch runs without synchronising. Images are float (n, 3, H, W) in [0, 1]
unless a docstring says otherwise.

Crops are resampled by two per-image weight matrices (rows, then columns), built from the box of
each image: ``crop = Wy @ image @ Wx^T``. The weights are PIL's bicubic (Keys' cubic with a = -0.5)
with its antialiasing support (the kernel widened by the reduction factor when the crop shrinks),
restricted to the box and renormalised at its edges, as ``torch.nn.functional.interpolate(...,
mode="bicubic", antialias=True)`` computes them; a flip reverses the column matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GRAY_WEIGHTS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blend_jitter",
    "gaussian_blur",
    "grayscale",
    "normalize",
    "resample_weights",
    "resized_crops",
    "set_grayscale",
    "solarize",
]

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma, rounded as there)
_KEYS_A = -0.5  # PIL's and antialiased PyTorch's bicubic; plain F.interpolate bicubic uses -0.75


def _keys_cubic(x: Tensor) -> Tensor:
    """Keys (1981) cubic convolution kernel with a = -0.5 (zero at |x| >= 2, where both pieces meet)."""
    x = x.abs().clamp_(max=2.0)
    a = _KEYS_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, far)


def resample_weights(offset: Tensor, length: Tensor, *, in_size: int, out_size: int, max_scale: float | None = None,
                     flip: Tensor | None = None) -> Tensor:
    """Bicubic (antialiased) resampling weights of the span [offset, offset + length) of each image.

    ``offset`` and ``length`` are (n,) float, in input pixels (fractional where the images are
    stored squeezed). Returns (n, out_size, in_size) float32 rows that sum to 1; only input pixels
    inside [floor(offset), ceil(offset + length)) get weight, as when the box is cropped first.
    ``flip`` (n,) bool reverses the output order of those images (a mirrored crop).

    Only the taps a kernel can reach are computed and then scattered into the dense rows: at most
    ``4 * max(max_scale, 1) + 1`` per output, where ``max_scale`` bounds ``length / out_size``
    (pass it from host-side numbers on CUDA; None reads it from ``length``).
    """
    dtype = torch.float32
    if max_scale is None:
        max_scale = float(length.max()) / out_size
    taps = min(in_size, math.ceil(4 * max(max_scale, 1.0)) + 1)
    offset, length = offset.to(dtype)[:, None, None], length.to(dtype)[:, None, None]
    outputs = torch.arange(out_size, device=offset.device, dtype=dtype)[None, :, None]
    if flip is not None:
        outputs = torch.where(flip[:, None, None], out_size - 1 - outputs, outputs)
    scale = length / out_size  # input pixels per output pixel
    # Shrinking widens the kernel by the factor (antialiasing); enlarging keeps it at 2 pixels.
    inverse = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))
    support = 2 / inverse
    center = offset + scale * (outputs + 0.5)  # (n, out, 1), in input pixels
    # A box mapped onto a squeezed grid may end a rounding error past the last pixel.
    low, high = offset.floor().clamp_(min=0), (offset + length).ceil().clamp_(max=in_size)
    first = torch.maximum(torch.floor(center - support + 0.5), low)
    index = first + torch.arange(taps, device=offset.device, dtype=dtype)  # (n, out, taps)
    weights = _keys_cubic((index + 0.5 - center) * inverse)
    weights = torch.where(index < high, weights, torch.zeros_like(weights))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    dense = torch.zeros((offset.shape[0], out_size, in_size), device=offset.device, dtype=dtype)
    # Taps past the last pixel carry weight 0; clamped onto it they add exact zeros, so the sum is
    # the same in any order (CUDA's atomic adds included).
    return dense.scatter_add_(2, index.clamp_(max=in_size - 1).to(torch.int64), weights)


def resized_crops(pixels: Tensor, *, top: Tensor, left: Tensor, height: Tensor, width: Tensor, size: int,
                  flip: Tensor | None = None, max_scale: tuple[float, float] | None = None) -> Tensor:
    """Crop box i of image i and resize it to (size, size): uint8 (n, 3, H, W) -> float (n, 3, size, size).

    Boxes are (n,) float in pixels of ``pixels``. ``flip`` (n,) bool mirrors those crops left-right.
    ``max_scale``: (rows, columns) bounds on box side / size (see :func:`resample_weights`).
    Values are scaled to [0, 1] and clipped there, as PIL clips bicubic overshoot to 0..255; unlike
    PIL they are not rounded to 1/255 steps (PIL also rounds between its two passes).
    """
    row_scale, column_scale = max_scale or (None, None)
    rows = resample_weights(top, height, in_size=pixels.shape[-2], out_size=size, max_scale=row_scale)
    columns = resample_weights(left, width, in_size=pixels.shape[-1], out_size=size, max_scale=column_scale, flip=flip)
    n, channels, height, width = pixels.shape
    # Columns first, as one plain bmm over (n, 3H, W); broadcasting the weights over channels in
    # that pass takes a slow path on CPU.
    images = torch.bmm(pixels.to(torch.float32).view(n, channels * height, width), columns.transpose(1, 2))
    images = torch.matmul(rows.div_(255)[:, None], images.view(n, channels, height, size))  # (n, 3, size, size)
    return images.clamp_(0, 1)


def grayscale(images: Tensor) -> Tensor:
    """Luma (n, 1, H, W) with torchvision's weights; expand to 3 channels for RandomGrayscale."""
    r, g, b = images.unbind(dim=-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def _per_image(values: Tensor) -> Tensor:
    return values.to(torch.float32)[:, None, None, None]


def _blend(images: Tensor, reference: Tensor, factors: Tensor) -> Tensor:
    """``f * x + (1 - f) * ref`` clipped to [0, 1] (torchvision's ``_blend``), as one fused lerp."""
    return torch.lerp(reference, images, _per_image(factors)).clamp_(0, 1)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Blend with black by factor (n,): torchvision ``adjust_brightness`` per image."""
    return _blend(images, torch.zeros_like(images[:, :1]), factors)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blend with the image's mean luma by factor (n,): torchvision ``adjust_contrast`` per image."""
    return _blend(images, grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blend with the image's luma by factor (n,): torchvision ``adjust_saturation`` per image."""
    return _blend(images, grayscale(images), factors)


def blend_jitter(images: Tensor, kinds: Tensor, factors: Tensor) -> Tensor:
    """One step of ColorJitter for every image at once, in place: kind (n,) 0 brightness, 1
    contrast, 2 saturation (each blended by its factor (n,)), anything else leaves the image as it is.

    The three are blends with black, the mean luma or the luma, so one pass serves the whole batch
    whatever op each image draws at this step: ``x += (1 - f) * (ref - x)``, clipped to [0, 1].
    """
    luma = grayscale(images)
    kind = kinds[:, None, None, None]
    mean = luma.mean(dim=(-3, -2, -1), keepdim=True)
    reference = luma.mul_(kind == 2).add_(mean * (kind == 1))  # (n, 1, H, W); black for brightness
    toward = torch.where(kinds <= 2, 1.0 - factors.to(torch.float32), torch.zeros_like(factors, dtype=torch.float32))
    return images.lerp_(reference.expand_as(images), toward[:, None, None, None]).clamp_(0, 1)


def set_grayscale(images: Tensor, apply: Tensor) -> Tensor:
    """RandomGrayscale in place: images where ``apply`` (n,) is true become their luma on 3 channels."""
    weight = apply.to(torch.float32)[:, None, None, None]  # lerp at weight 1 returns the luma exactly
    return images.lerp_(grayscale(images).expand_as(images), weight)


def adjust_hue(images: Tensor, factors: Tensor) -> Tensor:
    """Rotate hue by factor (n,) in [-0.5, 0.5] turns: torchvision ``adjust_hue`` per image.

    Hue as torchvision's RGB -> HSV (after Pillow's Convert.c), in sixths of a turn; back with the
    closed form ``c = V - (V - min) clamp(min(k, 4 - k), 0, 1)``, ``k = (m + 6 H) mod 6`` for
    m = 5, 3, 1 (R, G, B): the function of torchvision's six-sector table without its
    (n, 3, 6, H, W) stack. Saturation and value are untouched, so V - min (the chroma) is kept.
    """
    r, g, b = images.unbind(dim=-3)
    maxc, minc = images.amax(dim=-3), images.amin(dim=-3)
    chroma = maxc - minc
    divisor = torch.where(chroma == 0, torch.ones_like(chroma), chroma)  # grey pixels: any hue, no colour
    sixths = torch.where(maxc == r, (g - b) / divisor,
                         torch.where(maxc == g, 2.0 + (b - r) / divisor, 4.0 + (r - g) / divisor))
    sixths = sixths + (6.0 + 6.0 * factors.to(torch.float32)[:, None, None])  # > 0 for factors >= -0.5
    # m = 5, 3, 1 made on the device: a tensor from a Python list would be a blocking copy on CUDA
    sectors = (5.0 - 2.0 * torch.arange(3, device=images.device, dtype=torch.float32))[None, :, None, None]
    k = torch.remainder(sixths[:, None] + sectors, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0, 1)
    return torch.addcmul(maxc[:, None], chroma[:, None], ramp, value=-1.0)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Gaussian blur with one sigma (n,) per image, reflect padding: torchvision ``gaussian_blur``.

    Separable: a grouped (depthwise) conv over rows then columns, one group per image channel;
    torchvision convolves with the outer product of the same 1-D kernel in one pass.
    """
    n, channels, height, width = images.shape
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, steps=kernel_size, device=images.device, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (taps[None, :] / sigmas.to(torch.float32)[:, None]).pow(2))
    kernel = (pdf / pdf.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (n * C, k)
    flat = F.pad(images.reshape(1, n * channels, height, width), [kernel_size // 2] * 4, mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * channels)
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * channels)
    return flat.view(n, channels, height, width)


def solarize(images: Tensor, apply: Tensor, threshold: float) -> Tensor:
    """Invert pixels >= ``threshold`` in the images where ``apply`` (n,) is true: torchvision ``solarize``."""
    flip = apply[:, None, None, None] & (images >= threshold)
    return torch.where(flip, 1.0 - images, images)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel (mean, std: (3, 1, 1) on the images' device), in place."""
    return images.sub_(mean).div_(std)
