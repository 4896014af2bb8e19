"""Training views per second: PIL views in DataLoader workers vs views made in batches (DESIGN.md §6).

The two ways ``python -m supernet.train`` makes its views (``data.pipeline``), on the same images in
the same order (``EpochSampler``):

* loader: the PIL view sampler per image (``ViewDataset``: decode the JPEG, crop, jitter, ...)
  in ``--workers`` DataLoader worker processes, batched by the default collate, as the run does;
* batched: the images decoded once into a uint8 store, every view of a batch made at once
  (``DeviceBatches``) on CPU tensors, and on CUDA tensors when a GPU is present.

For each view sampler (``two_crop``, ``sslight``) and batch size, ``--rounds`` interleaved rounds
(the side that goes first alternates) each time ``--waves`` x workers batches on every side; a
round's ratio is batched / loader images per second of that round, so load drift hits both alike.
The loader gets a fresh DataLoader every round (its workers are gone before the other side runs)
and is timed from the first batch of its workers' second wave: worker start-up and the first
wave's head start are not counted against it. The store's one-time build is reported apart.
PASS: the median CPU ratio is >= 1 for every setting.

    python benchmarks/bench_views.py --data-root /tmp/cifar/cifar10/train --json views.json
    python benchmarks/bench_views.py --data-root /tmp/cifar/cifar10/train --view-threads 2
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from supernet.cli import ArgumentParser, command
from supernet.data.batched_views import BatchedViews
from supernet.data.datasets import load_image_data
from supernet.data.device_batches import DeviceBatches
from supernet.data.sampling import EpochSampler, ViewDataset
from supernet.data.store import ImageStore, build_store, choose_pipeline
from supernet.data.views import build_views, plan_views
from supernet.devices import data_workers
from supernet.io.files import atomic_write_text
from supernet.io.provenance import machine_record
from supernet.settings import SettingsError
from supernet.train import load_train_settings
from supernet.training.setup import view_options

TARGET = 1.0
SSLIGHT = ["views=sslight"]


@dataclass
class Setting:
    """One view sampler at one batch size: images per second of every round, per side."""

    views: str
    batch_size: int
    loader: list[float] = field(default_factory=list)
    batched_cpu: list[float] = field(default_factory=list)
    batched_cuda: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [ours / theirs for ours, theirs in zip(self.batched_cpu, self.loader)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def summary(self) -> dict[str, Any]:
        median = lambda values: statistics.median(values) if values else None  # noqa: E731
        return {**asdict(self), "ratios": self.ratios, "median_ratio": self.ratio, "median_loader": median(self.loader),
                "median_batched_cpu": median(self.batched_cpu), "median_batched_cuda": median(self.batched_cuda)}


@dataclass
class Report:
    benchmark: str
    data_root: str
    train_images: int
    resolution: int
    workers: int
    threads: int
    view_threads: int
    rounds: int
    waves: int
    store: str
    store_seconds: float
    load_before: str
    load_after: str
    machine: dict[str, Any]
    settings: list[Setting]
    passed: bool = False

    def as_json(self) -> str:
        import json

        payload = {key: value for key, value in asdict(self).items() if key != "settings"}
        payload["settings"] = [setting.summary() for setting in self.settings]
        return json.dumps(payload, indent=2) + "\n"


def load_average() -> str:
    with open("/proc/loadavg", encoding="ascii") as file:
        return " ".join(file.read().split()[:3])


def time_loader(dataset: ViewDataset, *, batch_size: int, workers: int, waves: int, epoch: int) -> float:
    """Steady images per second of a fresh DataLoader: ``waves`` rounds of one batch per worker.

    Workers start together, so batch ``w`` opens their second wave; the clock runs from its arrival
    to that of batch ``w + waves * w`` (start-up and the first wave's head start are not counted).
    """
    sampler = EpochSampler(len(dataset), seed=0, epoch=epoch, batch_size=batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(epoch))
    per_wave = max(workers, 1)
    batches = iter(loader)
    for _ in range(per_wave):
        next(batches)
    started = time.perf_counter()
    for _ in range(waves * per_wave):
        next(batches)
    seconds = time.perf_counter() - started
    del batches  # shut the workers down before the other side runs
    gc.collect()
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return waves * per_wave * batch_size / seconds


def time_batched(batches: DeviceBatches, *, images: int, epoch: int) -> float:
    """Images per second of the batched views, the first batch of the round not counted."""
    cuda = batches.store.pixels.device.type == "cuda"
    stream = batches.epoch(epoch)
    next(stream)
    if cuda:
        torch.cuda.synchronize()
    started, seen = time.perf_counter(), 0
    while seen < images:
        seen += next(stream)[0].shape[0]
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def print_table(report: Report) -> None:
    cuda = any(setting.batched_cuda for setting in report.settings)
    print(f"\n{'views':9s} {'batch':>5s} {'loader img/s':>13s} {'batched CPU':>12s}" + (f" {'batched CUDA':>13s}" if cuda else "")
          + f" {'ratio CPU/loader (median, min-max)':>36s}")
    for s in report.settings:
        row = (f"{s.views:9s} {s.batch_size:5d} {statistics.median(s.loader):13,.0f} {statistics.median(s.batched_cpu):12,.0f}"
               + (f" {statistics.median(s.batched_cuda):13,.0f}" if cuda else ""))
        print(f"{row} {s.ratio:20.2f} ({min(s.ratios):.2f}-{max(s.ratios):.2f})")


@command()
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="bench_views.py", description=__doc__)
    parser.add_argument("--data-root", type=Path, required=True, help="ImageFolder of CIFAR JPEGs (cifar10/train)")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--views", nargs="+", default=["two_crop", "sslight"], choices=["two_crop", "sslight"])
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: configs/data/cifar10.yaml's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the main process")
    parser.add_argument("--view-threads", type=int, default=1,
                        help="threads the batched views run on (DeviceBatches.cpu_threads; the training loop's: 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--waves", type=int, default=2, help="loader batches timed per worker and round")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every number here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.waves < 1 or min(args.batch_sizes) < 2:
        raise SettingsError("--rounds, --waves and --batch-sizes: expected >= 1, >= 1 and >= 2")
    default = load_train_settings(["data=cifar10"]).data.num_workers  # the run's default: null, one per core
    workers = data_workers(default if args.workers is None else args.workers)
    torch.set_num_threads(args.threads)
    load_before = load_average()
    data = load_image_data("imagefolder", root=str(args.data_root), max_images=args.train_images, holdout_size=1000,
                           download=False, seed=0)
    choice = choose_pipeline("device", dataset=data.train, resolution=args.resolution, store_side=None,
                             device=torch.device("cpu"))
    assert choice.layout is not None and choice.sizes is not None
    started = time.perf_counter()
    store = build_store(data.train, sizes=choice.sizes, layout=choice.layout, device=torch.device("cpu"), num_workers=workers)
    store_seconds = time.perf_counter() - started
    cuda_store = None
    if torch.cuda.is_available():
        cuda_store = ImageStore(pixels=store.pixels.cuda(), sizes=store.sizes, layout=store.layout)
    print(f"{len(data.train):,} training images; store {choice.layout.describe()} built in {store_seconds:.1f} s; "
          f"{workers} loader workers, batched views on {args.view_threads} of {args.threads} threads; "
          f"load average {load_before}", flush=True)

    report = Report(benchmark="bench_views", data_root=str(args.data_root), train_images=len(data.train),
                    resolution=args.resolution, workers=workers, threads=args.threads, view_threads=args.view_threads,
                    rounds=args.rounds,
                    waves=args.waves, store=choice.layout.describe(), store_seconds=store_seconds,
                    load_before=load_before, load_after="", machine=machine_record(args.threads), settings=[])
    if cuda_store is not None:
        report.machine["cuda"] = torch.cuda.get_device_name()
    for name in args.views:
        cfg = load_train_settings(["recipe=none", "data=cifar10", *(SSLIGHT if name == "sslight" else [])])
        pil_views, _ = build_views(name, args.resolution, view_options(cfg))
        plan = plan_views(name, args.resolution, view_options(cfg))
        dataset = ViewDataset(data.train, pil_views, seed=0)
        for batch_size in args.batch_sizes:
            setting = Setting(views=name, batch_size=batch_size)
            images = args.waves * max(workers, 1) * batch_size  # the batched side times as many images
            sides = {"loader": lambda epoch: time_loader(dataset, batch_size=batch_size, workers=workers,
                                                         waves=args.waves, epoch=epoch),
                     "batched_cpu": lambda epoch, s=store: time_batched(
                         DeviceBatches(store=s, views=BatchedViews(plan=plan), seed=0, batch_size=batch_size,
                                       cpu_threads=args.view_threads), images=images, epoch=epoch)}
            if cuda_store is not None:
                sides["batched_cuda"] = lambda epoch, s=cuda_store: time_batched(
                    DeviceBatches(store=s, views=BatchedViews(plan=plan), seed=0, batch_size=batch_size),
                    images=images, epoch=epoch)
            order = list(sides)
            for round_index in range(args.rounds):
                for side in (order if round_index % 2 == 0 else order[::-1]):
                    getattr(setting, side).append(sides[side](round_index))
            report.settings.append(setting)
            print(f"{name} batch {batch_size}: loader {statistics.median(setting.loader):,.0f} img/s, batched CPU "
                  f"{statistics.median(setting.batched_cpu):,.0f} img/s, ratio {setting.ratio:.2f}", flush=True)
            if args.json is not None:
                atomic_write_text(args.json, report.as_json())
    report.load_after = load_average()
    report.passed = all(setting.ratio >= TARGET for setting in report.settings)
    print_table(report)
    print(f"load average before {report.load_before}, after {report.load_after}")
    worst = min(report.settings, key=lambda s: s.ratio)
    print(f"{'PASS' if report.passed else 'FAIL'}: batched views on CPU vs the PIL loader, worst median ratio "
          f"{worst.ratio:.2f} ({worst.views}, batch {worst.batch_size}); target >= {TARGET}")
    if args.json is not None:
        atomic_write_text(args.json, report.as_json())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
