"""Reference parity: our BYOL against the `lightly` package's BYOL, same everything else (DESIGN.md §6).

Ours: ``python -m supernet.train`` with the sandwich and the gates off, so only BYOL at full width
trains (``ssl=byol``: -cos, EMA teacher). Reference: lightly's ``BYOLProjectionHead``,
``BYOLPredictionHead``, ``NegativeCosineSimilarity`` (the symmetric 0.5 * (L(p0, z1) + L(p1, z0)) of
its example) and ``update_momentum`` around the same backbone: our supernet's maximum network, built
under the same seed, so both start from the same weights. Both read the same images in the same
order with the same augmentations (our seeded ``ViewDataset`` and ``EpochSampler``), and take SGD
steps with the same learning-rate schedule, momentum, weight decay, batch and EMA momentum.

Both are scored the same way: BN recalibrated on 2,000 training images, weighted kNN (k = 20,
T = 0.07) of a labeled bank of training images against a disjoint labeled test split; beside them
the untrained network and raw pixels. Target: mean kNN over the seeds within 1 point of lightly's.

    pip install -e ".[bench]"
    python benchmarks/bench_parity.py --data-root /tmp/data/c10_train5k --test-root /tmp/data/c10_test2k \\
        --epochs 8 --seeds 0 1 2 --out runs/bench_parity --json parity.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from supernet.data.sampling import EpochSampler, ViewDataset
from supernet.data.views import build_views
from supernet.evaluation import knn_score, prepare_eval_data, raw_pixel_knn
from supernet.io.checkpoint import load_supernet
from supernet.io.provenance import machine_record
from supernet.nn.bn import recalibrate_bn
from supernet.train import load_train_settings
from supernet.training import TrainConfig, train
from supernet.training.optim import parameter_groups
from supernet.training.schedules import warmup_cosine_lr
from supernet.training.setup import build_run, view_options

TARGET_POINTS = 1.0


def settings(args: argparse.Namespace, seed: int, out_dir: Path) -> TrainConfig:
    return load_train_settings([
        "recipe=none", f"model.space={args.space}", "data=imagefolder", f"data.root={args.data_root}",
        f"data.test_root={args.test_root}", "data.holdout_size=0", f"data.max_images={args.train_images}",
        f"data.resolution={args.resolution}", "data.num_workers=0", "ssl=byol",
        f"ssl.proj_hidden_dim={args.hidden}", f"ssl.proj_dim={args.out_dim}", f"ssl.pred_hidden_dim={args.hidden}",
        "ssl.momentum_schedule=constant", f"ssl.base_momentum={args.momentum}", "views=two_crop",
        "sandwich.enabled=false", "gates.enabled=false", "regularization.group=false",
        f"regularization.weight_decay={args.weight_decay}", "optim.name=sgd", f"optim.lr={args.lr}",
        f"optim.warmup_epochs={args.warmup_epochs}", f"epochs={args.epochs}", f"batch_size={args.batch_size}",
        f"seed={seed}", "knn.enabled=false", "progress=false", f"out_dir={out_dir}",
    ])


def train_lightly(cfg: TrainConfig) -> nn.Module:
    """lightly's BYOL around our maximum network, on our data, views, order, schedule and optimizer."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    run = build_run(cfg)  # the same seed, data split and initial backbone as our run
    backbone = run.encoder
    model = nn.ModuleDict({
        "encoder": backbone,
        "projector": BYOLProjectionHead(backbone.feature_dim, cfg.ssl.proj_hidden_dim, cfg.ssl.proj_dim),
        "predictor": BYOLPredictionHead(cfg.ssl.proj_dim, cfg.ssl.pred_hidden_dim, cfg.ssl.proj_dim),
    })
    teacher_encoder, teacher_projector = copy.deepcopy(model["encoder"]), copy.deepcopy(model["projector"])
    deactivate_requires_grad(teacher_encoder)
    deactivate_requires_grad(teacher_projector)
    criterion = NegativeCosineSimilarity()
    groups = parameter_groups(model, weight_decay=cfg.regularization.weight_decay, decay_encoder=True)
    for group in groups:
        group.pop("lars_exclude")
    optimizer = torch.optim.SGD(groups, lr=run.lr, momentum=cfg.optim.momentum)
    views, _ = build_views(cfg.views.name, cfg.data.resolution, view_options(cfg))
    dataset = ViewDataset(run.data.train, views, seed=cfg.seed)
    step = 0
    for epoch in range(cfg.epochs):
        sampler = EpochSampler(len(dataset), seed=cfg.seed, epoch=epoch, batch_size=cfg.batch_size)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            generator=torch.Generator().manual_seed(cfg.seed + epoch))
        for x0, x1 in loader:
            lr = warmup_cosine_lr(step, run.total_steps, base_lr=run.lr,
                                  warmup_steps=int(cfg.optim.warmup_epochs * run.steps_per_epoch))
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            teacher_encoder.train()
            teacher_projector.train()
            p0 = model["predictor"](model["projector"](model["encoder"](x0)))
            p1 = model["predictor"](model["projector"](model["encoder"](x1)))
            with torch.no_grad():
                z0 = teacher_projector(teacher_encoder(x0))
                z1 = teacher_projector(teacher_encoder(x1))
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update_momentum(model["encoder"], teacher_encoder, cfg.ssl.base_momentum)
            update_momentum(model["projector"], teacher_projector, cfg.ssl.base_momentum)
            step += 1
    return model["encoder"]


def score(network: nn.Module, eval_data, cfg: TrainConfig) -> float:  # noqa: ANN001
    knn = cfg.knn
    network = copy.deepcopy(network).eval()
    recalibrate_bn(network, eval_data.calibration, len(eval_data.calibration), batch_size=knn.batch_size, seed=knn.seed)
    return knn_score(network, eval_data, k=knn.k, temperature=knn.temperature, batch_size=knn.batch_size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True, help="ImageFolder tree of training images (CIFAR-10 JPEGs)")
    parser.add_argument("--test-root", required=True, help="ImageFolder tree of disjoint labeled test images")
    parser.add_argument("--space", default="small")
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.5, help="per 256 images")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--momentum", type=float, default=0.99, help="EMA teacher momentum (constant)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--out-dim", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_parity"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        cfg = settings(args, seed, args.out / f"ours-seed{seed}")
        started = time.perf_counter()
        ours_dir = train(cfg)
        ours_time = time.perf_counter() - started
        ours_net, _ = load_supernet(ours_dir / "checkpoint.pt")
        started = time.perf_counter()
        reference = train_lightly(settings(args, seed, args.out / f"lightly-seed{seed}"))
        lightly_time = time.perf_counter() - started
        run = build_run(settings(args, seed, args.out / f"untrained-seed{seed}"))  # initial weights, eval data
        knn = cfg.knn
        eval_data = prepare_eval_data(run.data, resolution=cfg.data.resolution, calibration_images=knn.calibration_images,
                                      bank_size=knn.bank_size, val_size=knn.val_size, seed=knn.seed)
        row = {"seed": seed, "ours": score(ours_net, eval_data, cfg), "lightly": score(reference, eval_data, cfg),
               "untrained": score(run.encoder, eval_data, cfg), "raw_pixels": raw_pixel_knn(eval_data),
               "ours_seconds": ours_time, "lightly_seconds": lightly_time,
               "bank": len(eval_data.bank), "test": len(eval_data.val)}
        rows.append(row)
        print(f"seed {seed}: kNN ours {row['ours']:.2%}  lightly {row['lightly']:.2%}  untrained {row['untrained']:.2%}  "
              f"raw pixels {row['raw_pixels']:.2%}  ({row['bank']} bank, {row['test']} test images; "
              f"{ours_time:.0f} s / {lightly_time:.0f} s)", flush=True)
    gap = 100 * (statistics.mean(r["ours"] for r in rows) - statistics.mean(r["lightly"] for r in rows))
    verdict = "PASS" if abs(gap) <= TARGET_POINTS else "FAIL"
    print(f"mean over {len(rows)} seeds: ours {statistics.mean(r['ours'] for r in rows):.2%}, lightly "
          f"{statistics.mean(r['lightly'] for r in rows):.2%}, gap {gap:+.2f} points  [{verdict}: target |gap| <= "
          f"{TARGET_POINTS} point]")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "gap_points": gap, "args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": machine_record(args.threads)}, indent=2))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
