"""Searched per-layer widths vs uniform width at equal FLOPs, on a trained supernet.

For each uniform width m: budget = fvcore FLOPs of the uniform network; run the search (NSGA-II)
under that budget; compare the most accurate searched config (gates off, so FLOPs are static) with
the uniform network, by the oracle's kNN and, independently of the oracle, by a linear probe of
both extracted, BN-recalibrated networks (AutoSlim's claim: non-uniform beats uniform).

    python benchmarks/bench_searched_vs_uniform.py --checkpoint runs/bench_one_shot/supernet/checkpoint.pt \\
        --widths 0.5 0.75 --trials 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from nas.budget import Budget
from nas.settings import load_search_settings
from nas.study.oracle import build_oracle
from nas.study.run import SearchRequest, at_resolution, search
from search_spaces import SubnetConfig
from supernet.evaluation import (
    embed_tensor,
    linear_probe,
    raw_pixel_knn,
    untrained_network,
)
from supernet.io.checkpoint import load_supernet
from supernet.nn.flops import count_flops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.75])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    settings = load_search_settings(args.overrides)
    supernet, payload = load_supernet(args.checkpoint)
    oracle = build_oracle(supernet, payload, settings.data, settings.oracle, torch.device("cpu"))
    space, resolution = supernet.space, oracle.data.resolution

    seed = int(payload.get("config", {}).get("seed", 0))
    pixels = raw_pixel_knn(oracle.data, k=oracle.k, temperature=oracle.temperature)

    def measure(cfg: SubnetConfig) -> dict:
        network = oracle.subnet(cfg)
        bank = embed_tensor(network, oracle.data.bank, batch_size=oracle.batch_size, device=oracle.device)
        val = embed_tensor(network, oracle.data.val, batch_size=oracle.batch_size, device=oracle.device)
        probe = linear_probe(bank, oracle.data.bank_labels, val, oracle.data.val_labels, num_classes=oracle.data.num_classes,
                             epochs=settings.probe.epochs, lr=settings.probe.lr, weight_decay=settings.probe.weight_decay,
                             seed=settings.probe.seed)
        untrained = oracle.score(oracle.recalibrate(untrained_network(cfg, seed=seed, with_gates=supernet.with_gates,
                                                                       gate_options=supernet.gate_options)))
        return {"flops": count_flops(network, resolution), "knn": oracle.accuracy(cfg, network), "linear_probe": probe,
                "untrained_knn": untrained, "config": cfg.to_dict()}

    rows = []
    for width in args.widths:
        uniform = at_resolution(space.uniform_config(width), resolution)
        budget = float(count_flops(supernet.extract(uniform), resolution))
        with tempfile.TemporaryDirectory() as out:
            summary = search(SearchRequest(
                checkpoint=args.checkpoint, flops_budget=Budget("flops", budget), latency_budget=None, objective="flops",
                sampler="nsga2", trials=args.trials, timeout=None, device="cpu", storage=None, study_name=None,
                seed=args.seed, out=Path(out), settings=settings, progress=False))
        static = [r for r in summary.records if r["accuracy"] is not None and r["config"]["gate_thresholds"] is None
                  and r["flops"] <= budget]
        best = max(static, key=lambda r: (r["accuracy"], -r["flops"]))
        searched, baseline = measure(SubnetConfig.from_dict(best["config"])), measure(uniform)
        rows.append({"width": width, "budget_flops": budget, "uniform": baseline, "searched": searched,
                     "searched_is_uniform": best["config"] == uniform.to_dict()})
        print(f"width {width}: budget {budget / 1e6:.2f} MFLOPs | uniform kNN {baseline['knn']:.2%} (untrained "
              f"{baseline['untrained_knn']:.2%}) probe {baseline['linear_probe']:.2%} | searched "
              f"{searched['flops'] / 1e6:.2f} MFLOPs kNN {searched['knn']:.2%} (untrained {searched['untrained_knn']:.2%}) "
              f"probe {searched['linear_probe']:.2%}", flush=True)
    print(f"raw pixels kNN {pixels:.2%} ({len(oracle.data.val)} {oracle.data.val_source} images)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "raw_pixels": pixels}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
