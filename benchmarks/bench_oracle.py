"""Oracle cost per candidate vs the bare forward passes it needs (DESIGN.md §6).

The oracle's scoring of a candidate (extract its weights, recalibrate BatchNorm on the calibration images, embed
the bank and validation images, kNN top-1 and the search's score ``oracle.score``, e.g. a probe fitted on the
bank for ``probe_*``) against the forward passes alone: the calibration images through the network with
BatchNorm in training mode, then the bank and validation images in eval mode, at the same batch size.
Target: scoring / forward passes <= 1.3.

Beside it, the whole evaluation a search trial runs (``CandidateEvaluator.evaluate``: the scoring plus fvcore
FLOPs and the latency measured on the device, at least ``latency.timed_seconds`` per batch size timed), no
target: what a trial costs. One evaluator serves every candidate, as it serves a whole study, so the latency
anchor (the reference network anchored timing scales by) is timed once, before the first candidate, and
reported on its own. Each candidate's three measurements run back to back, caches dropped before each.

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
    configs = [at_resolution(space.sample(rng), resolution) for _ in range(args.candidates + 1)]
    evaluator = CandidateEvaluator(supernet, oracle, flops_budget=None, latency_budget=None, latency=latency)
    started = time.perf_counter()
    evaluator.evaluate(configs[0])  # times the anchor once, as a study's first trial does; not counted
    first = time.perf_counter() - started
    print(f"first evaluation, with the latency anchor timed once per study: {first:.2f} s (not counted)")
    rows = []
    for cfg in configs[1:]:
        oracle.forget()
        started = time.perf_counter()
        accuracy, score = oracle.accuracy(cfg), oracle.score_of(cfg)
        scoring = time.perf_counter() - started
        bare = bare_forward_passes(supernet.extract(cfg), oracle.data, oracle.batch_size)
        oracle.forget()
        evaluator.forget()
        started = time.perf_counter()
        result = evaluator.evaluate(cfg)
        oracle.score_of(cfg)
        evaluation = time.perf_counter() - started
        rows.append({"flops": result.flops, "accuracy": accuracy, "score": score, "scoring_s": scoring,
                     "forward_s": bare, "ratio": scoring / bare, "evaluation_s": evaluation,
                     "evaluation_ratio": evaluation / bare})
        print(f"{result.flops / 1e6:8.2f} MFLOPs  kNN {accuracy:.2%}  {oracle.score_kind} {score:.4f}  "
              f"forward passes {bare:6.2f} s  scoring {scoring:6.2f} s ({scoring / bare:.3f})  "
              f"whole evaluation {evaluation:6.2f} s ({evaluation / bare:.3f})")
    ratio = statistics.median(r["ratio"] for r in rows)
    whole = statistics.median(r["evaluation_ratio"] for r in rows)
    data = oracle.data
    print(f"images per candidate: {len(data.calibration)} calibration + {len(data.bank)} bank + {len(data.val)} val "
          f"({data.val_source} split), batch {oracle.batch_size}, {args.threads} threads, score {oracle.score_kind}")
    print(f"median ratio whole evaluation (+ FLOPs, latency timed >= {latency.timed_seconds:g} s a batch size) / "
          f"forward passes: {whole:.3f}  [no target]")
    print(f"median ratio scoring / forward passes: {ratio:.3f}  [{'PASS' if ratio <= TARGET else 'FAIL'}: target <= {TARGET}]")
    if args.json:
        record = {"ratio": ratio, "evaluation_ratio": whole, "first_evaluation_s": first, "score": oracle.score_kind,
                  "threads": args.threads, "overrides": args.overrides, "rows": rows}
        args.json.write_text(json.dumps(record))
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
