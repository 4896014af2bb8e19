"""One-shot supernet vs separately trained networks on real images (US3L's claim), with baselines.

Trains, with the same self-supervised method, views, epochs and data:
  * ONE gated slimmable supernet (sandwich, dynamic sampling, gates toward ``--gate-target``),
    scored at uniform widths 1.0, 0.5 and 0.25 with gates off, and gated at full width with every
    threshold at 0.5 (effective FLOPs reported beside);
  * three fixed networks of those widths (the ``<space>@<width>`` spaces), each trained alone.
Every network is scored the same way, beside the same architecture at its initial weights and raw
pixels: BN recalibrated on 2,000 training images, weighted kNN (k = 20, T = 0.07) of a labeled bank
of training images against a disjoint labeled test split (``--test-root``).

    python benchmarks/bench_one_shot.py --data-root /tmp/data/c10_train10k --test-root /tmp/data/c10_test2k \\
        --train-images 10000 --epochs 30 --out runs/bench_one_shot -- recipe=quickstart
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nas.cost import measure_costs
from search_spaces import SubnetConfig, get_space
from supernet.data.datasets import load_image_data
from supernet.evaluation import (
    EvalData,
    knn_score,
    prepare_eval_data,
    raw_pixel_knn,
    untrained_network,
)
from supernet.io.checkpoint import load_supernet
from supernet.io.provenance import machine_record
from supernet.nn.bn import recalibrate_bn
from supernet.nn.models import SuperNet
from supernet.train import load_train_settings
from supernet.training import train

WIDTHS = (1.0, 0.5, 0.25)


def recalibrated_knn(network: SuperNet, data: EvalData, seed: int) -> float:
    recalibrate_bn(network, data.calibration, len(data.calibration), seed=seed)
    return knn_score(network, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="ImageFolder tree of training images, e.g. CIFAR-10 JPEGs")
    parser.add_argument("--test-root", required=True, help="ImageFolder tree of disjoint labeled test images")
    parser.add_argument("--space", default="small")
    parser.add_argument("--train-images", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--gate-target", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_one_shot"))
    parser.add_argument("overrides", nargs="*", help="key=value settings for every run (e.g. recipe=quickstart)")
    args = parser.parse_args()

    common = [
        *args.overrides, "data=imagefolder", f"data.root={args.data_root}", f"data.test_root={args.test_root}",
        "data.holdout_size=0", f"data.max_images={args.train_images}", f"data.resolution={args.resolution}",
        "data.num_workers=0", f"epochs={args.epochs}", f"batch_size={args.batch_size}", f"seed={args.seed}",
        "knn.enabled=false", "progress=false", "resume=true",
    ]
    runs = {"supernet": [f"model.space={args.space}", "gates.enabled=true", f"gates.target={args.gate_target}"]}
    for width in WIDTHS:
        runs[f"separate@{width}"] = [f"model.space={args.space}@{width}", "sandwich.enabled=false", "gates.enabled=false"]
    timings = {}
    for name, overrides in runs.items():
        started = time.perf_counter()
        train(load_train_settings([*common, *overrides, f"out_dir={args.out / name}"]))
        timings[name] = time.perf_counter() - started
        print(f"trained {name} in {timings[name]:.0f} s", flush=True)

    data = load_image_data("imagefolder", root=args.data_root, max_images=args.train_images, holdout_size=0,
                           download=False, seed=args.seed, test_root=args.test_root)
    eval_data = prepare_eval_data(data, resolution=args.resolution, calibration_images=2000, bank_size=args.train_images,
                                  seed=args.seed)
    supernet, payload = load_supernet(args.out / "supernet" / "checkpoint.pt")
    space = supernet.space
    pixels = raw_pixel_knn(eval_data)

    def untrained(cfg: SubnetConfig, with_gates: bool) -> float:
        return recalibrated_knn(untrained_network(cfg, seed=args.seed, with_gates=with_gates,
                                                  gate_options=supernet.gate_options), eval_data, args.seed)

    rows = []
    for width in WIDTHS:
        cfg = space.uniform_config(width)
        separate, _ = load_supernet(args.out / f"separate@{width}" / "checkpoint.pt")
        separate_cfg = separate.space.max_config()
        rows.append({
            "network": f"width {width}", "flops": measure_costs(supernet.extract(cfg), cfg, eval_data.calibration[:8],
                                                                 resolution=args.resolution).flops,
            "one_shot": recalibrated_knn(supernet.extract(cfg), eval_data, args.seed),
            "one_shot_untrained": untrained(cfg, True),
            "separate": recalibrated_knn(separate.extract(separate_cfg), eval_data, args.seed),
            "separate_untrained": recalibrated_knn(
                untrained_network(separate_cfg, seed=args.seed, with_gates=False), eval_data, args.seed),
        })
    gated_cfg = space.max_config(gate_threshold=0.5)
    gated = supernet.extract(gated_cfg)
    gated_knn = recalibrated_knn(gated, eval_data, args.seed)
    costs = measure_costs(gated, gated_cfg, eval_data.calibration[:512], resolution=args.resolution)
    rows.append({"network": f"gated (t_d={args.gate_target}, threshold 0.5)", "flops": costs.effective_flops,
                 "one_shot": gated_knn, "one_shot_untrained": untrained(gated_cfg, True),
                 "separate": None, "separate_untrained": None})

    print(f"\nkNN top-1 on {len(eval_data.val)} test images ({len(eval_data.bank)} bank); raw pixels {pixels:.2%}")
    print(f"{'network':<34} {'MFLOPs':>8} {'one-shot':>9} {'untrained':>10} {'separate':>9} {'untrained':>10}")
    for row in rows:
        sep = "-" if row["separate"] is None else f"{row['separate']:.2%}"
        sep_u = "-" if row["separate_untrained"] is None else f"{row['separate_untrained']:.2%}"
        print(f"{row['network']:<34} {row['flops'] / 1e6:>8.2f} {row['one_shot']:>9.2%} {row['one_shot_untrained']:>10.2%} "
              f"{sep:>9} {sep_u:>10}")
    total_separate = sum(v for k, v in timings.items() if k != "supernet")
    print(f"training time: supernet {timings['supernet']:.0f} s, three separate networks {total_separate:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "raw_pixels": pixels,
        "train_seconds": timings, "space": get_space(args.space).name, "checkpoint_step": payload["step"],
        "machine": machine_record(torch.get_num_threads())}, indent=2))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
