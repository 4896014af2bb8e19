"""Views made in batches: shapes and ranges, per-image parameter distributions equal to the PIL
path's (two-sample KS statistics, each shown to reject a plausible mistake), whole-view statistics
against the PIL path, rank sharding, resume."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from supernet.data.batched_views import BatchedViews, crop_boxes, draw_view_params
from supernet.data.device_batches import DeviceBatches
from supernet.data.sampling import EpochSampler, ViewDataset
from supernet.data.store import ImageStore, StoreLayout
from supernet.data.views import IMAGENET_MEAN, IMAGENET_STD, CropGroup, ViewOptions, build_views, plan_views

pytestmark = pytest.mark.usefixtures("single_thread")

SSLIGHT = dict(num_local=6, global_scale=(0.3, 1.0), blur=(1.0, 0.1), local_blur=0.5, solarize=(0.0, 0.2),
               jitter=(0.4, 0.4, 0.2, 0.1))  # configs/views/sslight.yaml
DRAWS = 4000


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def ks_limit(n: int, m: int, alpha: float = 1e-4) -> float:
    """The KS statistic two samples of one distribution exceed with probability ``alpha``."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def _torchvision_boxes(height: int, width: int, scale: tuple[float, float], draws: int) -> np.ndarray:
    torch.manual_seed(11)
    image = torch.empty(3, height, width)
    return np.array([transforms.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(draws)])


def _box_features(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    top, left, h, w = boxes.T.astype(np.float64)
    return {"area": h * w / (height * width), "log_aspect": np.log(w / h), "top": top, "left": left}


@pytest.mark.parametrize(("height", "width", "scale"), [(32, 32, (0.2, 1.0)), (40, 25, (0.08, 1.0)),
                                                        (64, 16, (0.3, 1.0)), (96, 96, (0.05, 0.3))])
def test_crop_boxes_follow_torchvision_get_params(height: int, width: int, scale: tuple[float, float]) -> None:
    """Area fraction, aspect ratio and offsets; 64 x 16 falls back to the centre crop on most draws."""
    theirs = _box_features(_torchvision_boxes(height, width, scale, DRAWS), height, width)
    sizes = torch.tensor([[height, width]]).expand(DRAWS, 2)
    ours = _box_features(crop_boxes(torch.Generator().manual_seed(12), sizes, scale).numpy(), height, width)
    limit = ks_limit(DRAWS, DRAWS)
    for name in theirs:
        assert ks_statistic(ours[name], theirs[name]) < limit, name
    # offsets reach every position torchvision's randint reaches, the far edges included
    for name, side, length in (("top", height, 2), ("left", width, 3)):
        touch_ours = np.mean(ours[name] + crop_boxes(torch.Generator().manual_seed(12), sizes, scale).numpy()[:, length]
                             == side)
        touch_theirs = np.mean(theirs[name] + _torchvision_boxes(height, width, scale, DRAWS)[:, length] == side)
        assert abs(touch_ours - touch_theirs) < 5 * math.sqrt(max(touch_theirs, 1e-3) / DRAWS) and touch_theirs > 0, name
    # the same test rejects a box drawn from SSLight's scale where two_crop's was meant
    shifted = _box_features(crop_boxes(torch.Generator().manual_seed(12), sizes, (scale[0] + 0.1, scale[1])).numpy(),
                            height, width)
    assert ks_statistic(shifted["area"], theirs["area"]) > limit


def test_crop_fallback_is_torchvisions_centre_crop_exactly() -> None:
    """No box of scale 1 fits a 64 x 16 image at aspect >= 3/4: both give the same centred box."""
    sizes = torch.tensor([[64, 16]]).expand(50, 2)
    ours = crop_boxes(torch.Generator().manual_seed(0), sizes, (1.0, 1.0))
    expected = transforms.RandomResizedCrop.get_params(torch.empty(3, 64, 16), [1.0, 1.0], [3 / 4, 4 / 3])
    assert (ours == torch.tensor(expected)).all()


def _draw(group: CropGroup, options: ViewOptions, draws: int = DRAWS, seed: int = 13):
    sizes = torch.tensor([[group.resolution, group.resolution]]).expand(draws, 2)
    side = group.resolution
    return draw_view_params(torch.Generator().manual_seed(seed), sizes=sizes, stored=(side, side), group=group,
                            options=options)


def test_jitter_factors_and_order_follow_colorjitter_get_params() -> None:
    options = ViewOptions(jitter=(0.4, 0.4, 0.2, 0.1))
    ours = _draw(CropGroup(32, (0.2, 1.0), 0.0, 0.0), options)
    jitter = transforms.ColorJitter(*options.jitter)
    torch.manual_seed(14)
    theirs = [jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) for _ in range(DRAWS)]
    limit = ks_limit(DRAWS, DRAWS)
    for column, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        their_factors = np.array([params[1 + column] for params in theirs])
        assert ks_statistic(ours.factors[:, column].numpy(), their_factors) < limit, name
    stronger = transforms.ColorJitter(brightness=0.5)  # a plausible slip: 0.5 where 0.4 was meant
    wrong = [stronger.get_params(stronger.brightness, None, None, None)[1] for _ in range(DRAWS)]
    assert ks_statistic(ours.factors[:, 0].numpy(), np.array(wrong)) > limit
    # ColorJitter's order is a uniform permutation of the four ops: chi-square over the 24 orders
    index = {order: k for k, order in enumerate(permutations(range(4)))}
    counts = np.bincount([index[tuple(row)] for row in ours.order.tolist()], minlength=24)
    chi2 = float(((counts - DRAWS / 24) ** 2 / (DRAWS / 24)).sum())
    assert chi2 < 60.0  # 23 degrees of freedom: exceeded with probability < 1e-5
    their_counts = np.bincount([index[tuple(params[0].tolist())] for params in theirs], minlength=24)
    assert float(((their_counts - DRAWS / 24) ** 2 / (DRAWS / 24)).sum()) < 60.0


@pytest.mark.parametrize("resolution", [32, 96])
def test_probabilities_and_blur_sigma_follow_the_pil_path(resolution: int) -> None:
    options = ViewOptions(solarize=(0.0, 0.2))
    group = CropGroup(resolution, (0.2, 1.0), 0.5, 0.2)
    ours = _draw(group, options)
    expected = {"flip": 0.5, "jitter": 0.8, "grayscale": 0.2, "solarize": 0.2, "blur": 0.5 if resolution >= 64 else 0.0}
    for name, p in expected.items():
        rate = float(getattr(ours, name).float().mean())
        assert abs(rate - p) < 5 * math.sqrt(max(p * (1 - p), 1e-9) / DRAWS) + 1e-12, (name, rate, p)
    torch.manual_seed(15)
    sigmas = np.array([transforms.GaussianBlur.get_params(0.1, 2.0) for _ in range(DRAWS)])
    assert ks_statistic(ours.sigma.numpy(), sigmas) < ks_limit(DRAWS, DRAWS)
    off = _draw(group, ViewOptions(flip=False, photometric=False))
    assert not (off.flip.any() or off.jitter.any() or off.grayscale.any() or off.solarize.any())


def _photo(side: int = 32) -> Image.Image:
    """A smooth colour image with some texture: crops, jitter and flips all change its statistics."""
    y, x = np.mgrid[0:side, 0:side] / side
    noise = np.random.default_rng(0).random((side, side))
    rgb = np.stack([0.2 + 0.6 * x, 0.7 - 0.5 * y + 0.1 * noise, 0.3 + 0.4 * x * y], axis=-1)
    return Image.fromarray((255 * rgb).round().astype(np.uint8))


def _view_statistics(views: list[torch.Tensor]) -> dict[str, np.ndarray]:
    stack = torch.stack(views)  # (draws, 3, R, R), normalised
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    pixels = stack * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + mean
    return {"red": pixels[:, 0].mean(dim=(1, 2)).numpy(), "green": pixels[:, 1].mean(dim=(1, 2)).numpy(),
            "spread": pixels.std(dim=(1, 2, 3)).numpy(), "left_right": (pixels[..., :8].mean(dim=(1, 2, 3))
                                                                    - pixels[..., -8:].mean(dim=(1, 2, 3))).numpy()}


def _batched_views(image: Image.Image, plan, draws: int, view: int = 0) -> list[torch.Tensor]:
    pixels = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())[None].expand(draws, -1, -1, -1).contiguous()
    views = BatchedViews(plan=plan)
    params = views.draw([torch.Generator().manual_seed(16 + v) for v in range(len(views))],
                        sizes=torch.tensor([[image.height, image.width]]).expand(draws, 2), stored=(image.height, image.width))
    return list(views(pixels, params)[view])


def test_whole_views_match_the_pil_paths_statistics() -> None:
    """Per-view colour means, spread and left-right balance of 1,500 views of one image: PIL vs batched."""
    draws, image = 1500, _photo()
    pil_views, _ = build_views("two_crop", 32)
    torch.manual_seed(17)
    pil = _view_statistics([pil_views.groups[0][0](image) for _ in range(draws)])
    ours = _view_statistics(_batched_views(image, plan_views("two_crop", 32), draws))
    limit = ks_limit(draws, draws)
    for name in pil:
        assert ks_statistic(ours[name], pil[name]) < limit, name
    no_flip = _view_statistics(_batched_views(image, plan_views("two_crop", 32, flip=False), draws))
    assert ks_statistic(no_flip["left_right"], pil["left_right"]) > limit  # the statistics see a missing flip
    strong = _view_statistics(_batched_views(image, plan_views("two_crop", 32, jitter=(0.8, 0.4, 0.4, 0.1)), draws))
    assert ks_statistic(strong["spread"], pil["spread"]) > limit or ks_statistic(strong["red"], pil["red"]) > limit


def test_forced_choices_give_the_pil_view_pixel_for_pixel() -> None:
    """Scale 1 (the whole image), no flip or jitter, grayscale and solarisation always: both paths
    make the same view, up to PIL's rounding to whole levels (its luma weights are 0.299, not 0.2989)."""
    options = dict(global_scale=(1.0, 1.0), flip=False, jitter=(0.0, 0.0, 0.0, 0.0), solarize=(1.0, 1.0))
    image = _photo()
    pil_views, _ = build_views("sslight", 32, num_local=0, **options)
    plan = plan_views("sslight", 32, num_local=0, **options)
    plan = type(plan)(plan.groups, type(plan.options)(**{**plan.options.__dict__, "grayscale_prob": 1.0}), plan.spec)
    for transform, _ in pil_views.groups:  # the PIL path with the same forced grayscale
        for step in transform.transforms:
            if isinstance(step, transforms.RandomGrayscale):
                step.p = 1.0
    ours = _batched_views(image, plan, 2)
    level = 1 / 255 / min(IMAGENET_STD)  # one grey level, normalised
    for view in range(2):
        expected = pil_views.groups[view][0](image)
        torch.testing.assert_close(ours[0] if view == 0 else _batched_views(image, plan, 2, view=1)[0], expected,
                                   rtol=0, atol=1.01 * level)
    bright = float((np.asarray(image.convert("L")) >= 128).mean())
    assert 0.1 < bright < 0.9  # the threshold splits the image: a wrong one changes many pixels


def _store(count: int = 64, side: int = 32) -> ImageStore:
    pixels = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(18))
    return ImageStore(pixels=pixels, sizes=torch.full((count, 2), side), layout=StoreLayout(count, side, side, False))


@pytest.mark.parametrize(("name", "resolution", "options"), [("two_crop", 32, {}), ("sslight", 32, SSLIGHT),
                                                             ("sslight", 96, SSLIGHT)])
def test_views_have_the_pil_paths_shapes_dtype_and_range(name: str, resolution: int, options: dict) -> None:
    plan = plan_views(name, resolution, **options)
    batches = DeviceBatches(store=_store(side=resolution + 8), views=BatchedViews(plan=plan), seed=0, batch_size=16)
    views = next(batches.epoch(0))
    pil, _ = build_views(name, resolution, **options)
    expected = [tuple(v.shape) for v in pil(Image.new("RGB", (resolution + 8, resolution + 8)))]
    assert [tuple(v.shape[1:]) for v in views] == expected and all(v.shape[0] == 16 for v in views)
    low = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    for view in views:
        assert view.dtype == torch.float32 and view.is_contiguous()
        assert low - 1e-5 <= float(view.min()) and float(view.max()) <= high + 1e-5
    assert not torch.equal(views[0], views[1])


def test_each_rank_makes_its_share_of_the_one_process_batch() -> None:
    store, plan = _store(), plan_views("sslight", 32, **SSLIGHT)
    whole = DeviceBatches(store=store, views=BatchedViews(plan=plan), seed=3, batch_size=16)
    expected = list(whole.epoch(1))
    for rank in range(2):
        shard = DeviceBatches(store=store, views=BatchedViews(plan=plan), seed=3, batch_size=16, rank=rank, world_size=2)
        for step, views in enumerate(shard.epoch(1)):
            for ours, full in zip(views, expected[step]):
                torch.testing.assert_close(ours, full[rank::2], rtol=0, atol=1e-6)
        loader_order = EpochSampler(len(store), seed=3, epoch=1, batch_size=16, rank=rank, world_size=2).order
        device_order = EpochSampler(len(store), seed=3, epoch=1, batch_size=16).order.view(-1, 16)[:, rank::2]
        assert torch.equal(loader_order, device_order.reshape(-1))  # the DataLoader path's shard, image for image


def test_views_resume_mid_epoch_and_change_with_epoch_and_seed() -> None:
    store, plan = _store(), plan_views("two_crop", 32)
    batches = DeviceBatches(store=store, views=BatchedViews(plan=plan), seed=0, batch_size=16)
    straight = list(batches.epoch(2))
    resumed = list(batches.epoch(2, start_batch=2))
    assert len(straight) == 4 and len(resumed) == 2
    for ours, theirs in zip(resumed, straight[2:]):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert not torch.equal(next(batches.epoch(3))[0], straight[0][0])
    other_seed = DeviceBatches(store=store, views=BatchedViews(plan=plan), seed=1, batch_size=16)
    assert not torch.equal(next(other_seed.epoch(2))[0], straight[0][0])


def test_pil_dataset_and_batched_views_share_one_plan() -> None:
    """Both paths are built from the same ViewPlan: same spec, groups and options."""
    plan = plan_views("sslight", 96, **SSLIGHT)
    _, spec = build_views("sslight", 96, **SSLIGHT)
    assert plan.spec == spec and [g.count for g in plan.groups] == [1, 1, 6]
    assert len(BatchedViews(plan=plan)) == 8
    assert ViewDataset  # the loader path is untouched (tests/supernet/data/test_views.py)
