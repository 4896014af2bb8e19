"""One-shot supernet vs separately trained networks on real images (US3L's claim).

Trains, with the same self-supervised method, views and epochs:
  * ONE slimmable supernet (sandwich, dynamic sampling, group regularization; gates off so both
    sides run the same method), evaluated at uniform widths 1.0, 0.5 and 0.25;
  * three fixed networks of those widths (the ``<space>@<width>`` spaces), each trained alone.
Every network is scored the same way: BN recalibrated on 2,000 training images, weighted kNN
(k = 20, T = 0.07) of a labeled bank of training images against a disjoint labeled split.

    python benchmarks/bench_one_shot.py --data-root /tmp/cifar/cifar10/train --train-images 5000 \\
        --holdout 1000 --epochs 6 --out runs/bench_one_shot
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from supernet.data.datasets import load_image_data
from supernet.evaluation import knn_score, prepare_eval_data
from supernet.io.checkpoint import load_supernet
from supernet.nn.bn import recalibrate_bn
from supernet.train import load_train_settings
from supernet.training import train

WIDTHS = (1.0, 0.5, 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="ImageFolder tree, e.g. CIFAR-10 JPEGs")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_one_shot"))
    args = parser.parse_args()

    common = [
        "data=imagefolder", f"data.root={args.data_root}", f"data.max_images={args.train_images}",
        f"data.holdout_size={args.holdout}", f"data.resolution={args.resolution}", "data.num_workers=0",
        f"epochs={args.epochs}", f"batch_size={args.batch_size}", f"seed={args.seed}", "gates.enabled=false",
        "knn.enabled=false", "progress=false", "resume=true",
    ]
    runs = {"supernet": [f"model.space={args.space}"]}
    for width in WIDTHS:
        runs[f"separate@{width}"] = [f"model.space={args.space}@{width}", "sandwich.enabled=false"]
    timings = {}
    for name, overrides in runs.items():
        started = time.perf_counter()
        train(load_train_settings([*common, *overrides, f"out_dir={args.out / name}"]))
        timings[name] = time.perf_counter() - started
        print(f"trained {name} in {timings[name]:.0f} s", flush=True)

    data = load_image_data("imagefolder", root=args.data_root, max_images=args.train_images,
                           holdout_size=args.holdout, download=False, seed=args.seed)
    eval_data = prepare_eval_data(data, resolution=args.resolution, calibration_images=2000, bank_size=args.train_images,
                                  seed=args.seed)

    def score(checkpoint: Path, multiplier: float) -> float:
        supernet, _ = load_supernet(checkpoint)
        network = supernet.extract(supernet.space.uniform_config(multiplier))
        recalibrate_bn(network, eval_data.calibration, len(eval_data.calibration), seed=args.seed)
        return knn_score(network, eval_data)

    rows = []
    for width in WIDTHS:
        one_shot = score(args.out / "supernet" / "checkpoint.pt", width)
        separate = score(args.out / f"separate@{width}" / "checkpoint.pt", 1.0)
        rows.append({"width": width, "one_shot_knn": one_shot, "separate_knn": separate, "difference": one_shot - separate})
    print(f"\n{'width':>6} {'one-shot kNN':>13} {'separate kNN':>13} {'difference':>11}")
    for row in rows:
        print(f"{row['width']:>6} {row['one_shot_knn']:>13.2%} {row['separate_knn']:>13.2%} {row['difference'] * 100:>+10.2f}pp")
    total_separate = sum(v for k, v in timings.items() if k != "supernet")
    print(f"training time: supernet {timings['supernet']:.0f} s, three separate networks {total_separate:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows, "train_seconds": timings}, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
