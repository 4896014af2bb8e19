"""The oracle's evaluation images: its validation split comes from the training images, disjoint from the
bank, and never from the held-out split that judges it (issue 23)."""

from __future__ import annotations

import pytest
from PIL import Image
from torch.utils.data import Dataset

from supernet.data.datasets import ImageData
from supernet.evaluation.data import EvalData, ImageBank, prepare_eval_data, split_sizes

SIDE = 8


class NumberedImages(Dataset):
    """Image i is a flat colour that spells i (red = i % 256, green = i // 256, blue = the split's tag);
    label i % 10, or -1 (unlabelled) where ``unlabelled`` says."""

    def __init__(self, count: int, *, tag: int, unlabelled: int = 0) -> None:
        self.count, self.tag, self.unlabelled = count, tag, unlabelled

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.new("RGB", (SIDE, SIDE), (index % 256, index // 256, self.tag))
        return image, -1 if index % 7 == 0 and index < self.unlabelled else index % 10


def numbers(images: ImageBank) -> list[tuple[int, int]]:
    """(split tag, index) of each image, read back from its pixels."""
    pixels = images.pixels[:, :, 0, 0].long()
    return [(int(b), int(r) + 256 * int(g)) for r, g, b in pixels.tolist()]


def data(train: int = 600, *, test: int | None = 300, unlabelled: int = 0) -> ImageData:
    return ImageData("numbered", NumberedImages(train, tag=0, unlabelled=unlabelled), NumberedImages(50, tag=1), 10,
                     SIDE, NumberedImages(test, tag=2) if test is not None else None)


@pytest.mark.parametrize("test_split", [300, None])
def test_validation_images_are_training_images_outside_the_bank(test_split: int | None) -> None:
    eval_data = prepare_eval_data(data(test=test_split, unlabelled=210), resolution=SIDE, calibration_images=100,
                                  bank_size=200, val_size=150, seed=3, val_split="train")
    bank, val, calibration = numbers(eval_data.bank), numbers(eval_data.val), numbers(eval_data.calibration)
    assert eval_data.val_source == "train" and (len(bank), len(val), len(calibration)) == (200, 150, 100)
    assert {tag for tag, _ in bank + val + calibration} == {0}  # the held-out and test splits are never drawn
    assert not set(bank) & set(val) and len(set(val)) == len(val)
    assert all(index % 7 or index >= 210 for _, index in bank + val)  # unlabelled images neither vote nor score
    assert eval_data.val_labels.tolist() == [index % 10 for _, index in val]
    assert eval_data.bank_labels.tolist() == [index % 10 for _, index in bank]


def test_val_seed_fixes_the_validation_images_and_seed_draws_bank_and_calibration() -> None:
    """Issue 23: the validation split is chosen once (``val_seed``); two oracle seeds differ in their bank and
    calibration images only, and never draw a validation image into either."""
    def draw(seed: int, val_seed: int = 0) -> EvalData:
        return prepare_eval_data(data(), resolution=SIDE, calibration_images=10, bank_size=100, val_size=100,
                                 seed=seed, val_split="train", val_seed=val_seed)

    first, again, other = draw(0), draw(0), draw(1)
    for part in ("val", "bank", "calibration"):
        assert numbers(getattr(first, part)) == numbers(getattr(again, part)), part
    assert numbers(other.val) == numbers(first.val)
    assert numbers(other.bank) != numbers(first.bank) and numbers(other.calibration) != numbers(first.calibration)
    assert numbers(draw(0, val_seed=1).val) != numbers(first.val)
    for drawn in (first, other):
        assert not set(numbers(drawn.val)) & (set(numbers(drawn.bank)) | set(numbers(drawn.calibration)))


def test_a_small_training_split_is_shared_half_and_half() -> None:
    eval_data = prepare_eval_data(data(train=120), resolution=SIDE, calibration_images=10, bank_size=5000,
                                  val_size=5000, seed=0, val_split="train")
    assert (len(eval_data.bank), len(eval_data.val)) == (60, 60)
    assert not set(numbers(eval_data.bank)) & set(numbers(eval_data.val))
    assert split_sizes(40000, bank_size=5000, val_size=None) == (5000, 10000)  # null: 10,000 validation images
    assert split_sizes(40000, bank_size=5000, val_size=2000) == (5000, 2000)
    assert split_sizes(10, bank_size=3, val_size=2) == (3, 2)


def test_heldout_split_scores_the_test_images_as_before() -> None:
    eval_data = prepare_eval_data(data(), resolution=SIDE, calibration_images=10, bank_size=100, seed=0,
                                  val_split="heldout")
    assert eval_data.val_source == "test" and numbers(eval_data.val) == [(2, i) for i in range(300)]
    holdout = prepare_eval_data(data(test=None), resolution=SIDE, calibration_images=10, bank_size=100, seed=0)
    assert holdout.val_source == "holdout" and {tag for tag, _ in numbers(holdout.val)} == {1}


def test_an_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="val_split='test'; expected one of train, heldout"):
        prepare_eval_data(data(), resolution=SIDE, bank_size=10, val_split="test")
