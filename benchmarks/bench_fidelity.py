"""Oracle fidelity: does the weight-sharing kNN oracle rank sub-networks as a linear probe does?

For configs spread over the FLOP range (uniform widths and random per-layer configs, picked at FLOP
quantiles), compare the oracle's kNN accuracy with the top-1 of a linear probe (logistic regression
on the frozen features of the extracted, BN-recalibrated sub-network; labeled bank -> held-out
split). Kendall's tau-b between the two rankings; target (issue 4) >= 0.8. The oracle must also rank
the uniform widths 0.25 < 0.5 < 0.75 < 1.0 in order (monotone). Every kNN is printed beside the same
sub-network at the supernet's initial weights and beside raw pixels.

    python benchmarks/bench_fidelity.py --checkpoint runs/train/checkpoint.pt --configs 12 \
        data.test_root=/tmp/data/c10_test2k data.holdout_size=0
"""

from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from nas.settings import load_search_settings
from nas.study.oracle import build_oracle
from nas.study.run import at_resolution
from supernet.evaluation import (
    embed_tensor,
    linear_probe,
    raw_pixel_knn,
    untrained_network,
)
from supernet.io.checkpoint import load_supernet
from supernet.nn.flops import ShapeFlopCounter

TARGET = 0.8


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for (x1, y1), (x2, y2) in combinations(zip(x, y), 2):
        dx, dy = np.sign(x1 - x2), np.sign(y1 - y2)
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    denominator = np.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return float((concordant - discordant) / denominator) if denominator else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--pool", type=int, default=200, help="random configs to pick quantiles from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the oracle embeds: cpu or cuda")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_search_settings(args.overrides)
    supernet, payload = load_supernet(args.checkpoint)
    oracle = build_oracle(supernet, payload, settings.data, settings.oracle, torch.device(args.device))
    space, resolution = supernet.space, oracle.data.resolution
    rng = np.random.default_rng(0)
    pool = {space.uniform_config(m) for m in (0.25, 0.5, 0.75, 1.0)} | {space.sample(rng) for _ in range(args.pool)}
    counter = ShapeFlopCounter(supernet, resolution)  # fvcore's counts without tracing each config
    flops = {cfg: counter(cfg) for cfg in pool}
    ordered = sorted(pool, key=lambda cfg: flops[cfg])
    picks = [ordered[round(q)] for q in np.linspace(0, len(ordered) - 1, args.configs)]
    seed = int(payload.get("config", {}).get("seed", 0))
    pixels = raw_pixel_knn(oracle.data, k=oracle.k, temperature=oracle.temperature)
    rows = []
    for cfg in dict.fromkeys(picks):
        network = oracle.subnet(at_resolution(cfg, resolution))
        knn = oracle.accuracy(at_resolution(cfg, resolution), network)
        untrained = oracle.score(oracle.recalibrate(untrained_network(cfg, seed=seed, with_gates=supernet.with_gates,
                                                                       gate_options=supernet.gate_options)))
        bank = embed_tensor(network, oracle.data.bank, batch_size=oracle.batch_size, device=oracle.device)
        val = embed_tensor(network, oracle.data.val, batch_size=oracle.batch_size, device=oracle.device)
        probe = linear_probe(bank, oracle.data.bank_labels, val, oracle.data.val_labels,
                             num_classes=oracle.data.num_classes, epochs=settings.probe.epochs, lr=settings.probe.lr,
                             weight_decay=settings.probe.weight_decay, seed=settings.probe.seed)
        rows.append({"flops": flops[cfg], "knn": knn, "untrained_knn": untrained, "linear_probe": probe,
                     "config": cfg.to_dict()})
        print(f"{flops[cfg] / 1e6:8.2f} MFLOPs  kNN {knn:.2%} (untrained {untrained:.2%})  linear probe {probe:.2%}",
              flush=True)
    tau = kendall_tau_b([r["knn"] for r in rows], [r["linear_probe"] for r in rows])
    uniform = [oracle.accuracy(at_resolution(space.uniform_config(m), resolution)) for m in (0.25, 0.5, 0.75, 1.0)]
    monotone = all(a < b for a, b in zip(uniform, uniform[1:]))
    print(f"raw pixels kNN {pixels:.2%} ({len(oracle.data.val)} {oracle.data.val_source} images)")
    print(f"uniform widths 0.25/0.5/0.75/1.0: kNN {' / '.join(f'{u:.2%}' for u in uniform)}  "
          f"[{'PASS' if monotone else 'FAIL'}: monotone]")
    print(f"Kendall tau-b over {len(rows)} configs: {tau:.3f}  [{'PASS' if tau >= TARGET else 'FAIL'}: target >= {TARGET}]")
    if args.json:
        args.json.write_text(json.dumps({"tau": tau, "uniform_knn": uniform, "monotone": monotone, "raw_pixels": pixels,
                                         "rows": rows}))
    return 0 if tau >= TARGET and monotone else 1


if __name__ == "__main__":
    raise SystemExit(main())
