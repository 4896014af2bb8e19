"""``python -m nas.search --budget 1GFLOP``: multi-objective search of a trained supernet's sub-networks.

This module is the command line: it parses, builds a :class:`nas.study.run.SearchRequest`, calls
:func:`nas.study.run.search` and prints the front. What a search does: :mod:`nas.study.run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from nas.budget import BudgetError, format_cost, parse_budget
from nas.settings import load_search_settings
from nas.study.pareto import REFERENCE_LINES, cost_of, gate_speed_note, kind_of, objective_value
from nas.study.run import SearchRequest, SearchSummary, search
from nas.study.storage import SAMPLERS, SearchError
from supernet.cli import ArgumentParser, command
from supernet.io.checkpoint import find_latest_checkpoint
from supernet.nn.flops import FLOP_CONVENTION

__all__ = ["build_parser", "main", "print_table", "request_from_args"]


def print_table(summary: SearchSummary) -> None:
    objective, front = summary.objective, summary.front
    print(f"\nPareto front of {summary.study} ({len(front)} of {len(summary.records)} trials; {FLOP_CONVENTION}):")
    batch = next((r["latency"]["batch_size"] for r in front if r.get("latency")), 1)
    batch1 = batch != 1 and any("1" in (r.get("latency_by_batch") or {}) for r in front)
    kind = next((r.get("score_kind") for r in front if r.get("score_kind")), None)
    scored = kind not in (None, "knn_top1")  # ranked by another score: show it beside the top-1
    print(f"{'trial':>6} {'kNN top-1':>10}" + (f" {kind:>12}" if scored else "") + f" {'MFLOPs':>10} {'eff. MFLOPs':>12} "
          f"{'params (M)':>11} {f'latency b{batch}':>12}" + (f" {'latency b1':>12}" if batch1 else "") + "  kind")
    for r in front:
        latency = r.get("latency")
        latency_text = f"{latency['seconds'] * 1e3:.2f} ms" if latency else "-"
        if batch1:
            at_one = (r.get("latency_by_batch") or {}).get("1")
            at_one_text = f"{at_one['seconds'] * 1e3:.2f} ms" if at_one else "-"
            latency_text = f"{latency_text:>12} {at_one_text:>12}"
        score = f" {objective_value(r):>12.4f}" if scored else ""
        print(f"{r['trial']:>6} {r['accuracy']:>10.2%}{score} {r['flops'] / 1e6:>10.2f} {r['effective_flops'] / 1e6:>12.2f} "
              f"{r['params'] / 1e6:>11.3f} {latency_text:>12}  {kind_of(r)}")
    for note in filter(None, map(gate_speed_note, front)):
        print(f"  {note}")
    references = summary.references
    if references:
        print("references (same kNN, same images): " + ", ".join(
            f"{REFERENCE_LINES[key][0]} {value:.2%}" for key, value in references.items()))
    best = summary.best
    if best is not None:
        ranked = f" ({kind} {objective_value(best):.4f}, what the search ranks by)" if scored else ""
        print(f"best feasible: trial {best['trial']}, kNN {best['accuracy']:.2%}{ranked} at "
              f"{format_cost(objective, cost_of(best, objective))}")  # type: ignore[arg-type]
    else:
        print("no feasible trial was evaluated; raise the budget or run more trials")
    if front and front[0].get("latency"):
        latency = front[0]["latency"]
        how = f"predicted by the table {latency.get('table')} for" if latency["method"] == "table" else "measured as"
        runtime = f"{latency.get('runtime', 'eager')} {latency.get('dtype', 'float32')}"
        how = f"{how} {runtime} on" if latency["method"] != "table" else f"{how} {runtime},"
        anchored = (f"; anchored: each relative to {latency['anchor']} timed in the same rounds, scaled by its "
                    f"{latency['anchor_seconds'] * 1e3:.3f} ms" if latency.get("anchor") else "")
        print(f"latency {how} {latency['device']}, batch size {latency['batch_size']}"
              + (" (and 1)" if batch1 else "") + anchored)
    print(f"outputs: {summary.out_dir}/{{pareto.json,pareto.csv,pareto.png,best.json}}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas.search",
        description="Search a trained supernet's sub-networks for the Pareto front of kNN accuracy vs cost. "
        f"{FLOP_CONVENTION} (ResNet-50 at 224 px = 4.11 GFLOPs).",
        epilog="Extra key=value arguments override configs/search.yaml, e.g. oracle.bank_size=2000 data.root=./data",
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="supernet checkpoint (default: the newest checkpoint.pt under the current directory)")
    parser.add_argument("--budget", default=None,
                        help="FLOP budget (1GFLOP, 300MFLOPs, 5e8; one multiply-add = one flop) or latency (2.5ms, 200us)")
    parser.add_argument("--latency-budget", default=None, help="latency budget on --device, e.g. 2.5ms or 200us")
    parser.add_argument("--latency-table", type=Path, default=None, metavar="TABLE.json",
                        help="predict latency from this table (python -m nas.latency_table, built on the target "
                        "device) instead of timing --device")
    parser.add_argument("--objective", choices=("flops", "latency"), default=None,
                        help="cost to minimise (default: latency if only a latency budget is given, else flops)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="nsga2")
    parser.add_argument("--trials", type=int, default=50, help="finished trials the study should hold (all workers)")
    parser.add_argument("--timeout", type=float, default=None, help="stop asking for trials after this many seconds")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]: where the oracle runs and latency is measured")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default: a journal file in the run directory)")
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/search/<study name>)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def request_from_args(args: argparse.Namespace) -> SearchRequest:
    flops_budget = latency_budget = None
    if args.budget is not None:
        parsed = parse_budget(args.budget)
        flops_budget, latency_budget = (parsed, None) if parsed.kind == "flops" else (None, parsed)
    if args.latency_budget is not None:
        parsed = parse_budget(args.latency_budget)
        if parsed.kind != "latency":
            raise BudgetError(f"--latency-budget: {args.latency_budget!r} is a FLOP count; expected a time like 2.5ms")
        latency_budget = parsed
    objective = args.objective or ("latency" if latency_budget is not None and flops_budget is None else "flops")
    if args.trials <= 0:
        raise SearchError(f"--trials: {args.trials} is not a positive count; expected e.g. --trials 50")
    checkpoint = args.checkpoint or find_latest_checkpoint(".")
    if checkpoint is None:
        raise SearchError("--checkpoint: no checkpoint.pt under the current directory; train one with "
                          "python -m supernet.train or pass --checkpoint PATH")
    return SearchRequest(checkpoint=Path(checkpoint), flops_budget=flops_budget, latency_budget=latency_budget,
                         objective=objective, sampler=args.sampler, trials=args.trials, timeout=args.timeout,
                         device=args.device, storage=args.storage, study_name=args.study_name, seed=args.seed,
                         out=args.out, settings=load_search_settings(args.overrides), progress=not args.no_progress,
                         latency_table=args.latency_table)


@command(interrupted="interrupted: finished trials are kept in the study; re-run the same command to resume")
def main(argv: list[str] | None = None) -> int:
    # intermixed: key=value overrides may sit between options (parse_args takes only the first run of them)
    args = build_parser().parse_intermixed_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print_table(search(request_from_args(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
