"""Oracle cost per candidate vs the bare forward passes it needs (DESIGN.md §6).

A candidate's evaluation (extract, fvcore FLOPs, BN recalibration, latency, kNN embedding of bank
and validation images, kNN top-1 and the search's score ``oracle.score``, e.g. a probe fitted on the
bank for ``probe_*``) against the forward passes alone: the calibration images through the network
with BatchNorm in training mode, then the bank and validation images in eval mode, at the same batch
size. Target: evaluation / forward passes <= 1.3.

    python benchmarks/bench_oracle.py --checkpoint runs/train/checkpoint.pt --candidates 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from nas.settings import load_search_settings
from nas.study.candidates import CandidateEvaluator
from nas.study.oracle import build_oracle
from nas.study.run import at_resolution
from supernet.io.checkpoint import load_supernet

TARGET = 1.3


@torch.no_grad()
def bare_forward_passes(network: torch.nn.Module, data, batch_size: int) -> float:
    """Calibration images with BN in training mode, then bank and validation images in eval mode."""
    started = time.perf_counter()
    network.eval()
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    for images in data.calibration.split(batch_size):
        network(images)
    network.eval()
    for images in (*data.bank.split(batch_size), *data.val.split(batch_size)):
        network(images)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = load_search_settings(args.overrides)
    supernet, payload = load_supernet(args.checkpoint)
    oracle = build_oracle(supernet, payload, settings.data, settings.oracle, torch.device("cpu"))
    latency = settings.latency
    space, resolution = supernet.space, oracle.data.resolution
    rng = np.random.default_rng(0)
    configs = [at_resolution(space.sample(rng), resolution) for _ in range(args.candidates)]
    rows = []
    for cfg in configs:  # interleaved per candidate; a fresh evaluator so nothing is cached
        evaluator = CandidateEvaluator(supernet, oracle, flops_budget=None, latency_budget=None, latency=latency)
        oracle.forget()
        started = time.perf_counter()
        result = evaluator.evaluate(cfg)
        score = oracle.score_of(cfg)  # what the search ranks by; from the same embedding as the accuracy
        evaluation = time.perf_counter() - started
        bare = bare_forward_passes(supernet.extract(cfg), oracle.data, oracle.batch_size)
        rows.append({"flops": result.flops, "accuracy": result.accuracy, "score": score, "evaluation_s": evaluation,
                     "forward_s": bare, "ratio": evaluation / bare})
        print(f"{result.flops / 1e6:8.2f} MFLOPs  kNN {result.accuracy:.2%}  {oracle.score_kind} {score:.4f}  "
              f"evaluation {evaluation:.3f} s  "
              f"forward passes {bare:.3f} s  ratio {evaluation / bare:.3f}")
    ratio = statistics.median(r["ratio"] for r in rows)
    data = oracle.data
    print(f"images per candidate: {len(data.calibration)} calibration + {len(data.bank)} bank + {len(data.val)} val "
          f"({data.val_source} split), batch {oracle.batch_size}, {args.threads} threads, score {oracle.score_kind}")
    print(f"median ratio evaluation / forward passes: {ratio:.3f}  [{'PASS' if ratio <= TARGET else 'FAIL'}: target <= {TARGET}]")
    if args.json:
        args.json.write_text(json.dumps({"ratio": ratio, "score": oracle.score_kind, "rows": rows}))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
