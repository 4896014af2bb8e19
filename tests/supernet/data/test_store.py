"""The uint8 image store: the decoded pixels of every source, mixed sizes squeezed with their native
size kept, and the choice between the device and the loader pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from supernet.data.datasets import load_image_data
from supernet.data.sources import DataError, _STL10Unlabeled
from supernet.data.store import (
    STORE_MEMORY_SHARE,
    StoreLayout,
    build_store,
    choose_pipeline,
    native_sizes,
    store_layout,
)

CPU = torch.device("cpu")


def _folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """An ImageFolder tree of random RGB JPEGs and PNGs of (width, height) ``sizes`` in two classes."""
    rng = np.random.default_rng(0)
    for k, (width, height) in enumerate(sizes):
        folder = root / f"class{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{k:03d}.{'png' if k % 3 else 'jpg'}")
    return root


def _decoded(dataset) -> torch.Tensor:
    return torch.stack([pil_to_tensor(dataset[i][0]) for i in range(len(dataset))])


def _store_of(dataset, *, resolution: int = 32, store_side: int | None = None, workers: int = 0):
    choice = choose_pipeline("device", dataset=dataset, resolution=resolution, store_side=store_side, device=CPU)
    assert choice.layout is not None and choice.sizes is not None
    return build_store(dataset, sizes=choice.sizes, layout=choice.layout, device=CPU, num_workers=workers)


def test_array_source_store_holds_the_rgb_pixels_of_its_items() -> None:
    data = load_image_data("mnist_embedded", root=None, max_images=300, holdout_size=100, download=False, seed=0)
    store = _store_of(data.train)
    assert store.pixels.dtype == torch.uint8 and store.pixels.shape == (300, 3, 28, 28)
    assert torch.equal(store.pixels, _decoded(data.train))  # grey digits repeated on three channels, in split order
    assert store.layout == StoreLayout(300, 28, 28, squeezed=False) and (store.sizes == 28).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_one_size_folder_is_stored_as_decoded(tmp_path: Path, workers: int) -> None:
    data = load_image_data("imagefolder", root=str(_folder(tmp_path, [(20, 16)] * 12)), max_images=None,
                           holdout_size=2, download=False, seed=0)
    store = _store_of(data.train, workers=workers)
    assert store.pixels.shape == (10, 3, 16, 20) and not store.layout.squeezed
    assert torch.equal(store.pixels, _decoded(data.train))


def test_mixed_sizes_are_squeezed_with_their_native_size_kept(tmp_path: Path) -> None:
    sizes = [(30, 20), (16, 40), (64, 48), (25, 25), (33, 17), (20, 30)]
    data = load_image_data("imagefolder", root=str(_folder(tmp_path, sizes)), max_images=None, holdout_size=1,
                           download=False, seed=0)
    store = _store_of(data.train, resolution=24)
    side = int(24 * 256 / 224)
    assert store.layout == StoreLayout(5, side, side, squeezed=True)
    images = [data.train[i][0] for i in range(len(data.train))]
    assert store.sizes.tolist() == [[image.height, image.width] for image in images]
    for i, image in enumerate(images):
        assert torch.equal(store.pixels[i], pil_to_tensor(image.resize((side, side), Image.Resampling.BICUBIC)))
    assert store_layout(store.sizes, resolution=24, store_side=40).height == 40


def test_stl10_unlabeled_pixels_match_its_items(tmp_path: Path) -> None:
    raw = np.random.default_rng(1).integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    path = tmp_path / "unlabeled_X.bin"
    raw.tofile(path)
    pool = _STL10Unlabeled(str(path))
    store = _store_of(torch.utils.data.Subset(pool, [2, 0]))
    assert torch.equal(store.pixels, torch.stack([pil_to_tensor(pool[2][0]), pil_to_tensor(pool[0][0])]))
    assert native_sizes(pool).tolist() == [[96, 96]] * 3


def test_auto_chooses_by_the_memory_share_and_says_why(tmp_path: Path) -> None:
    data = load_image_data("imagefolder", root=str(_folder(tmp_path, [(32, 32)] * 8)), max_images=None, holdout_size=2,
                           download=False, seed=0)
    need = 6 * 3 * 32 * 32
    fits = choose_pipeline("auto", dataset=data.train, resolution=32, store_side=None, device=CPU,
                           free=int(need / STORE_MEMORY_SHARE) + 1)
    assert fits.name == "device" and "6 images at 32x32" in fits.reason and "within 50%" in fits.reason
    tight = choose_pipeline("auto", dataset=data.train, resolution=32, store_side=None, device=CPU, free=need + 1)
    assert tight.name == "loader" and "over 50%" in tight.reason
    assert choose_pipeline("device", dataset=data.train, resolution=32, store_side=None, device=CPU,
                           free=need + 1).name == "device"  # asked for: used while it fits at all
    with pytest.raises(DataError, match=r"^data\.pipeline: device, but .* expected data\.pipeline=auto or loader"):
        choose_pipeline("device", dataset=data.train, resolution=32, store_side=None, device=CPU, free=need - 1)
    assert choose_pipeline("loader", dataset=data.train, resolution=32, store_side=None, device=CPU).layout is None


class _UniformSizes(torch.utils.data.Dataset):
    """``count`` images of ``side`` x ``side`` px known from their headers alone (nothing to decode)."""

    def __init__(self, count: int, side: int) -> None:
        self.count, self.side = count, side

    def __len__(self) -> int:
        return self.count

    def image_sizes(self, index: np.ndarray) -> np.ndarray:
        return np.full((len(index), 2), self.side, dtype=np.int64)


def test_views_working_memory_in_closed_form() -> None:
    from supernet.data.batched_views import views_working_bytes

    n, h, w, s = 4, 100, 60, 20
    gathered = n * 3 * h * w
    column_pass = n * (3 * h * w + s * w + 3 * h * s) * 4  # float copy, column weights, column-resampled images
    one_view = n * 3 * s * s * 4
    assert views_working_bytes((h, w), images=n, sides=[s]) == gathered + column_pass
    assert views_working_bytes((h, w), images=n, sides=[s, s]) == gathered + one_view + column_pass
    assert views_working_bytes((h, w), images=n, sides=[]) == gathered


def test_auto_counts_the_views_working_memory_of_large_native_images() -> None:
    """Issue 21 item 11: 256 images of 1024 px kept at their native size take ~4 GB a view to make (each converted
    whole to float32), which auto's rule did not count: it chose the device where the store alone fitted."""
    dataset = _UniformSizes(64, 1024)  # a 0.2 GB store
    free = 2 * 10**9
    store_only = choose_pipeline("auto", dataset=dataset, resolution=224, store_side=None, device=CPU, free=free)
    assert store_only.name == "device"
    with_views = choose_pipeline("auto", dataset=dataset, resolution=224, store_side=None, device=CPU, free=free,
                                 view_batch=256, view_sides=[224, 224])
    assert with_views.name == "loader"
    assert "making a batch's views 5.12 GB more (256 images at 1024x1024 as float32)" in with_views.reason
    assert "over 50%" in with_views.reason
    with pytest.raises(DataError, match="making a batch's views"):
        choose_pipeline("device", dataset=dataset, resolution=224, store_side=None, device=CPU, free=free,
                        view_batch=256, view_sides=[224, 224])
    cifar = choose_pipeline("auto", dataset=_UniformSizes(40_000, 32), resolution=32, store_side=None, device=CPU,
                            free=free, view_batch=512, view_sides=[32, 32])
    assert cifar.name == "device"  # CIFAR's views cost megabytes


def test_headers_are_read_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 2: a benchmark setting up five runs on one tree read its 40,000 headers five times."""
    import os

    from supernet.data import sources

    root = _folder(tmp_path, [(32, 32), (40, 24), (32, 32), (16, 48)])
    first = native_sizes(load_image_data("imagefolder", root=str(root), max_images=None, holdout_size=1,
                                         download=False, seed=0).train)
    opened: list[str] = []
    real_open = sources.Image.open
    monkeypatch.setattr(sources.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    again = load_image_data("imagefolder", root=str(root), max_images=None, holdout_size=1, download=False, seed=0)
    assert torch.equal(native_sizes(again.train), first) and opened == []
    replaced = again.train.dataset.samples[again.train.indices[0]][0]
    Image.new("RGB", (20, 10)).save(replaced, format="PNG" if replaced.endswith("png") else "JPEG")
    os.utime(replaced, ns=(1, 1))  # another version of the file, whatever the clock's resolution
    assert native_sizes(again.train)[0].tolist() == [10, 20] and opened == [replaced]
