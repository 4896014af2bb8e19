"""Sandwich training step vs the same sub-networks trained one at a time (DESIGN.md §6).

A sandwich step trains N sub-networks with one teacher pass, one optimizer step and one EMA update;
the baseline is the sum of N standalone steps, each training one of the same sub-networks alone
(its own teacher pass, optimizer step and EMA update). Target: sandwich / sum <= 1.15.

    python benchmarks/bench_sandwich.py --space tiny --batch-size 128 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from supernet.data.sampling import ViewDataset
from supernet.data.views import build_views
from supernet.train import load_train_settings
from supernet.training.loop import train_step
from supernet.training.sandwich import plan_subnets
from supernet.training.setup import build_run

TARGET = 1.15


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num-subnets", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out_dir = Path(tempfile.mkdtemp(prefix="bench-sandwich-"))
    cfg = load_train_settings([
        f"model.space={args.space}", f"batch_size={args.batch_size}", f"data.resolution={args.resolution}",
        "knn.enabled=false", "progress=false", "gates.enabled=false", f"out_dir={out_dir / 'run'}",
        f"sandwich.num_subnets={args.num_subnets}",
    ])
    run = build_run(cfg)
    views_fn = build_views("two_crop", args.resolution)[0]
    items = [ViewDataset(run.data.train, views_fn, seed=0)[i] for i in range(args.batch_size)]
    views = [torch.stack([item[v] for item in items]) for v in range(2)]
    step = run.total_steps - 1  # last stage: the sandwich samples down to the smallest width
    plan = plan_subnets(run.space, seed=cfg.seed, step=step, total_steps=run.total_steps,
                        num_subnets=args.num_subnets, stage_min_widths=list(cfg.sandwich.stage_min_widths),
                        stage_ends=list(cfg.sandwich.stage_ends))

    def timed(step_plan: list) -> float:
        run.step = step
        started = time.perf_counter()
        train_step(run, views, plan=step_plan)
        return time.perf_counter() - started

    timed(plan)  # warm-up
    for _, subnet in plan:
        timed([("max", subnet)])
    ratios, sandwich_times, sums = [], [], []
    for _ in range(args.repeats):  # interleaved: drift hits both sides alike
        sandwich = timed(plan)
        standalone = sum(timed([("max", subnet)]) for _, subnet in plan)
        sandwich_times.append(sandwich)
        sums.append(standalone)
        ratios.append(sandwich / standalone)
    ratio = statistics.median(ratios)
    print(f"space {args.space}, batch {args.batch_size}, {args.resolution} px, {len(plan)} sub-networks "
          f"({', '.join(label for label, _ in plan)}), {args.threads} threads, gates off")
    print(f"sandwich step: median {statistics.median(sandwich_times):.3f} s; sum of standalone steps: "
          f"median {statistics.median(sums):.3f} s")
    print(f"ratio sandwich / sum (median of {args.repeats} rounds): {ratio:.3f}  "
          f"[{'PASS' if ratio <= TARGET else 'FAIL'}: target <= {TARGET}]")
    if args.json:
        args.json.write_text(json.dumps({"ratio": ratio, "ratios": ratios, "sandwich_s": sandwich_times,
                                         "standalone_sum_s": sums, "args": {k: str(v) for k, v in vars(args).items()}}))
    shutil.rmtree(out_dir, ignore_errors=True)
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
