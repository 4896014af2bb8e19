"""Search efficiency: hypervolume of NSGA-II and TPE after N trials vs random search after N and 2N.

Every sampler searches the same supernet with the same oracle (results cached per config, so a
config costs one evaluation whichever sampler proposes it) under one FLOP budget. Hypervolume of
the feasible (accuracy, FLOPs / budget) points, reference point (accuracy 0, FLOPs = budget).
Target (DESIGN.md §6): NSGA-II and TPE at N reach at least random's hypervolume at 2N.

    python benchmarks/bench_hypervolume.py --checkpoint runs/train/checkpoint.pt --budget 15MFLOPs \\
        --trials 24 --seeds 3 oracle.bank_size=1000 oracle.calibration_images=256 oracle.val_size=500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import optuna
import torch

from nas.budget import parse_budget
from nas.settings import load_search_settings
from nas.study.candidates import CandidateEvaluator, suggest_config
from nas.study.oracle import build_oracle
from nas.study.storage import build_sampler
from supernet.io.checkpoint import load_supernet


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by (accuracy, cost in [0, 1]) points, reference (0, 1): accuracy up, cost down."""
    area, best = 0.0, 0.0
    ordered = sorted(points, key=lambda p: p[1])
    for (accuracy, cost), following in zip(ordered, [*ordered[1:], (0.0, 1.0)]):
        best = max(best, accuracy)
        area += (following[1] - cost) * best
    return area


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--budget", default="15MFLOPs")
    parser.add_argument("--trials", type=int, default=24, help="N")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=8, help="NSGA-II generation size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = load_search_settings(args.overrides)
    supernet, payload = load_supernet(args.checkpoint)
    oracle = build_oracle(supernet, payload, settings.data, settings.oracle, torch.device("cpu"))
    budget = parse_budget(args.budget).value
    latency = dataclasses.replace(settings.latency, repeats=1, warmup=0)
    evaluator = CandidateEvaluator(supernet, oracle, flops_budget=budget, latency_budget=None, latency=latency)
    space, resolution = supernet.space, oracle.data.resolution

    def search(sampler: str, seed: int, trials: int) -> list[float]:
        """Hypervolume after each trial."""
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=build_sampler(sampler, seed=seed, population_size=args.population))
        points: list[tuple[float, float]] = []
        history = []

        def objective(trial: optuna.Trial) -> tuple[float, float]:
            result = evaluator.evaluate(suggest_config(trial, space, gates_available=supernet.with_gates,
                                                       resolution=resolution))
            for kind, violation in result.violations.items():
                trial.set_constraint(kind, violation)
            if result.accuracy is not None and result.feasible:
                points.append((result.accuracy, result.effective_flops / budget))
            history.append(hypervolume(points))
            return (result.accuracy or 0.0), result.effective_flops

        study.optimize(objective, n_trials=trials)
        return history

    n = args.trials
    table: dict[str, list[float]] = {"nsga2@N": [], "tpe@N": [], "random@N": [], "random@2N": []}
    for seed in range(args.seeds):
        for sampler in ("nsga2", "tpe"):
            table[f"{sampler}@N"].append(search(sampler, seed, n)[-1])
        history = search("random", seed, 2 * n)
        table["random@N"].append(history[n - 1])
        table["random@2N"].append(history[-1])
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in table.items()), flush=True)
    medians = {k: statistics.median(v) for k, v in table.items()}
    print(f"\nbudget {args.budget}, N = {n}, {args.seeds} seeds, NSGA-II population {args.population}; "
          f"{len(evaluator._cache)} distinct configs evaluated")
    for key, values in table.items():
        print(f"{key:>10}: median {medians[key]:.4f}  ({', '.join(f'{v:.4f}' for v in values)})")
    passed = medians["nsga2@N"] >= medians["random@2N"] and medians["tpe@N"] >= medians["random@2N"]
    print(f"NSGA-II@N / random@2N = {medians['nsga2@N'] / medians['random@2N']:.3f}, "
          f"TPE@N / random@2N = {medians['tpe@N'] / medians['random@2N']:.3f}  "
          f"[{'PASS' if passed else 'FAIL'}: target >= 1 for both]")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "medians": medians}))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
