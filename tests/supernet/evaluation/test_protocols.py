"""Protocols that train a head: augmentation from uint8, standard linear evaluation, SlimCLR's
switchable probe, SSLight's class-balanced label subsets and fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import get_space
from supernet.data.datasets import load_image_data
from supernet.data.views import normalize_pixels
from supernet.evaluation import (
    EvalData,
    ImageBank,
    class_balanced_subset,
    fit_heads,
    linear_evaluation,
    prepare_eval_data,
    random_resized_crop,
    semi_supervised_evaluation,
    switchable_linear_probe,
    width_networks,
)
from supernet.evaluation.augment import crop_boxes, resized_crops
from supernet.evaluation.protocols import _loss
from supernet.evaluation.settings import (
    LinearEvalSettings,
    SemiSupervisedSettings,
    SwitchableProbeSettings,
)
from supernet.nn.models import build_supernet

COLOURS = torch.tensor([[40, 40, 200], [200, 40, 40], [40, 200, 40], [200, 200, 40]])


def colour_data(labels: torch.Tensor, *, seed: int, side: int = 12, train: int = 200) -> EvalData:
    """Images of one colour per class (COLOURS) plus uniform noise of +-30: the mean colour, which no crop
    or flip changes, is a linear function of the class. The first ``train`` images are the bank."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(-30, 31, (labels.shape[0], 3, side, side), generator=generator)
    pixels = (COLOURS[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    bank, val = ImageBank(pixels[:train]), ImageBank(pixels[train:])
    return EvalData(bank, bank, labels[:train], val, labels[train:], len(COLOURS), side)


def mean_colour() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # (B, 3, R, R) -> (B, 3)


SHORT = LinearEvalSettings(epochs=15, batch_size=32, base_lr=0.8)  # lr 0.1: a short run of a small problem


# -- augmentation ------------------------------------------------------------------------------------
def test_full_crops_are_the_image_or_its_mirror() -> None:
    pixels = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = normalize_pixels(pixels)
    generator = torch.Generator().manual_seed(1)
    plain = random_resized_crop(pixels, generator=generator, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(plain, expected, atol=1e-5)
    flipped = random_resized_crop(pixels, generator=generator, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    same = (flipped - expected).flatten(1).abs().amax(dim=1) < 1e-5
    mirrored = (flipped - expected.flip(-1)).flatten(1).abs().amax(dim=1) < 1e-5
    assert bool((same | mirrored).all())
    assert 16 <= int(mirrored.sum()) <= 48  # about half are flipped


def test_a_crop_at_its_own_size_is_the_slice_of_the_image() -> None:
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crops = resized_crops(pixels, torch.tensor([[0, 0, 8, 8], [4, 6, 8, 8]]), mirror=torch.tensor([False, True]), size=8)
    assert torch.allclose(crops[0], normalize_pixels(pixels[0, :, :8, :8]), atol=1e-6)
    assert torch.allclose(crops[1], normalize_pixels(pixels[1, :, 4:12, 6:14]).flip(-1), atol=1e-6)
    # upsampling a 2x2 crop to 4x4 samples where F.interpolate's bilinear resize of that crop does; inside
    # the crop the values agree (at its edge the sampler reads the neighbouring pixels instead of clamping)
    up = resized_crops(pixels, torch.tensor([[3, 5, 2, 2], [0, 0, 2, 2]]), mirror=torch.tensor([False, False]), size=4)
    reference = F.interpolate(normalize_pixels(pixels[:1, :, 3:5, 5:7]), size=4, mode="bilinear", align_corners=False)
    assert torch.allclose(up[:1, :, 1:3, 1:3], reference[:, :, 1:3, 1:3], atol=1e-5)
    assert not torch.allclose(up[:1], reference, atol=1e-3)


def test_crop_boxes_stay_inside_the_image_with_areas_in_the_scale_range() -> None:
    boxes = crop_boxes(5000, 32, 32, scale=(0.08, 1.0), generator=torch.Generator().manual_seed(0))
    top, left, height, width = boxes.T
    assert bool(((top >= 0) & (left >= 0) & (top + height <= 32) & (left + width <= 32)).all())
    area = (height * width).double() / 32**2
    assert area.min() >= 0.06 and area.max() <= 1.0  # 0.08 up to rounding of the sides
    ratio = (width / height).double()
    assert ratio.min() >= 0.6 and ratio.max() <= 1.6  # (3/4, 4/3) up to rounding
    again = crop_boxes(5000, 32, 32, scale=(0.08, 1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_rejects_float_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        random_resized_crop(torch.zeros(2, 3, 8, 8), generator=torch.Generator())


# -- standard linear evaluation ------------------------------------------------------------------
def test_linear_evaluation_classifies_a_separable_problem() -> None:
    labels = torch.randint(0, len(COLOURS), (400,), generator=torch.Generator().manual_seed(0))
    data = colour_data(labels, seed=1)
    assert linear_evaluation(mean_colour(), data, settings=SHORT, seed=0) >= 0.98


def test_linear_evaluation_of_random_labels_stays_at_chance() -> None:
    generator = torch.Generator().manual_seed(2)
    colours = torch.randint(0, len(COLOURS), (1000,), generator=generator)
    images = colour_data(colours, seed=3, train=400)
    labels = torch.randint(0, len(COLOURS), (1000,), generator=generator)  # unrelated to the images
    data = EvalData(images.calibration, images.bank, labels[:400], images.val, labels[400:], len(COLOURS), 12)
    # raw pixels (432 dimensions) let the head memorise the 400 training labels ...
    settings = LinearEvalSettings(epochs=15, batch_size=32, base_lr=0.8, augment=False)
    memorised = EvalData(data.bank, data.bank, data.bank_labels, data.bank, data.bank_labels, len(COLOURS), 12)
    assert linear_evaluation(nn.Flatten(), memorised, settings=settings, seed=0) > 0.7
    # ... and none of that carries over to held-out images
    accuracy = linear_evaluation(nn.Flatten(), data, settings=settings, seed=0)
    chance, standard_error = 0.25, math.sqrt(0.25 * 0.75 / 600)
    assert abs(accuracy - chance) <= 4 * standard_error  # 4 standard errors: +-0.071
    assert abs(linear_evaluation(mean_colour(), data, settings=SHORT, seed=0) - chance) <= 4 * standard_error


def test_linear_evaluation_is_deterministic_and_cached_features_match_per_batch_ones() -> None:
    labels = torch.randint(0, len(COLOURS), (300,), generator=torch.Generator().manual_seed(4))
    data = colour_data(labels, seed=5, train=150)
    settings = LinearEvalSettings(epochs=3, batch_size=32, base_lr=0.8)
    first = linear_evaluation(mean_colour(), data, settings=settings, seed=7)
    assert linear_evaluation(mean_colour(), data, settings=settings, seed=7) == first
    # without augmentation the features are embedded once; the same heads come out as when each
    # batch is embedded anew, so fit_heads on a cached encoder equals one on a fresh one
    plain = LinearEvalSettings(epochs=3, batch_size=32, base_lr=0.8, augment=False)
    encoder = mean_colour()
    heads = fit_heads({"e": encoder}, data.bank, data.bank_labels, num_classes=4, epochs=3, batch_size=32, lr=0.1,
                      augment=False, seed=7)
    manual = fit_heads({"e": encoder}, data.bank, data.bank_labels, num_classes=4, epochs=3, batch_size=32, lr=0.1,
                       augment=False, finetune=True, seed=7)  # finetune: embeds per batch (no parameters to train)
    assert torch.allclose(heads["e"].linear.weight, manual["e"].linear.weight, atol=1e-6)
    assert linear_evaluation(mean_colour(), data, settings=plain, seed=7) >= 0.95


# -- SlimCLR's switchable probe ------------------------------------------------------------------
def test_switchable_loss_sums_the_heads_and_distills_from_the_widest() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = {"1.0": torch.randn(6, 3, generator=generator), "0.5": torch.randn(6, 3, generator=generator)}
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = F.cross_entropy(logits["1.0"], target) + F.cross_entropy(logits["0.5"], target)
    assert torch.allclose(_loss(logits, target, distill=False), plain)
    soft = -(F.softmax(logits["1.0"], dim=1) * F.log_softmax(logits["0.5"], dim=1)).sum(dim=1).mean()
    mixed = F.cross_entropy(logits["1.0"], target) + 0.5 * F.cross_entropy(logits["0.5"], target) + 0.5 * soft
    assert torch.allclose(_loss(logits, target, distill=True), mixed)


@pytest.fixture(scope="module")
def digits() -> EvalData:
    data = load_image_data("mnist_embedded", root=None, max_images=160, holdout_size=100, download=False, seed=0)
    return prepare_eval_data(data, resolution=16, calibration_images=64, bank_size=160, seed=0)


def test_switchable_probe_trains_one_head_per_width_and_scores_each(digits: EvalData) -> None:
    torch.manual_seed(0)
    supernet = build_supernet(get_space("tiny"), with_gates=False).eval()
    networks = width_networks(supernet, [0.5, 1.0, 0.25], digits, batch_size=64)
    assert list(networks) == ["1.0", "0.5", "0.25"]  # widest first: the head the others distil from
    dims = [network.feature_dim for network in networks.values()]
    assert dims == sorted(dims, reverse=True) and len(set(dims)) == 3
    for network in networks.values():  # each width's BatchNorm recalibrated on its own
        first_bn = next(m for m in network.modules() if isinstance(m, nn.BatchNorm2d))
        assert first_bn.running_mean.abs().sum() > 0 and not first_bn.training
    heads = fit_heads(networks, digits.bank, digits.bank_labels, num_classes=10, epochs=1, batch_size=64, lr=0.1,
                      distill=True)
    assert [head.linear.in_features for head in heads.values()] == dims
    # random crops down to 8 % of a 16-px digit destroy it; center crops show what the features hold
    settings = SwitchableProbeSettings(epochs=8, batch_size=64, base_lr=1.0, augment=False)
    scores = switchable_linear_probe(networks, digits, settings=settings, seed=0)
    assert list(scores) == list(networks)
    assert all(0.0 <= score <= 1.0 for score in scores.values())
    assert scores["1.0"] > 0.3  # even random features of digits carry far more than chance (0.10)


# -- SSLight's semi-supervised evaluation --------------------------------------------------------
def test_label_subsets_are_class_balanced_seeded_and_of_the_right_size() -> None:
    labels = torch.arange(10).repeat_interleave(torch.tensor([200, 150, 300, 120, 100, 250, 180, 90, 210, 400]))
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    for fraction, per_class in ((0.01, 2), (0.1, 20)):  # round(fraction * 2000 / 10)
        subset = class_balanced_subset(labels, fraction, seed=3)
        assert subset.numel() == 10 * per_class == round(fraction * labels.numel())
        assert torch.equal(torch.bincount(labels[subset], minlength=10), torch.full((10,), per_class))
        assert subset.unique().numel() == subset.numel() and torch.equal(subset, subset.sort().values)
        assert torch.equal(class_balanced_subset(labels, fraction, seed=3), subset)
        assert not torch.equal(class_balanced_subset(labels, fraction, seed=4), subset)
    # a class smaller than its share gives all it has; every class gives at least one
    small = torch.tensor([0] * 50 + [1] * 3)
    assert torch.bincount(small[class_balanced_subset(small, 0.5, seed=0)]).tolist() == [13, 3]
    assert torch.bincount(small[class_balanced_subset(small, 0.001, seed=0)]).tolist() == [1, 1]
    with pytest.raises(ValueError, match="fraction"):
        class_balanced_subset(small, 0.0, seed=0)


def test_semi_supervised_fine_tunes_a_copy_on_each_label_fraction() -> None:
    labels = torch.randint(0, len(COLOURS), (500,), generator=torch.Generator().manual_seed(6))
    data = colour_data(labels, seed=7, train=400)
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    settings = SemiSupervisedSettings(fractions=[0.02, 0.2], epochs=[30, 10], batch_size=16, base_lr=1.6)
    scores = semi_supervised_evaluation(network, data, settings=settings, seed=0)
    assert [score.labelled_images for score in scores] == [8, 80]  # round(0.02 * 400 / 4) = 2 per class; 20
    assert [score.epochs for score in scores] == [30, 10]
    assert all(torch.equal(before[name], tensor) for name, tensor in network.state_dict().items())
    assert scores[1].top1 >= 0.9  # colours are learnable from 80 labels
    with pytest.raises(ValueError, match="one per fraction"):
        semi_supervised_evaluation(network, data, settings=SemiSupervisedSettings(epochs=[1]), seed=0)
