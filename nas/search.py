"""``python -m nas.search --budget 1GFLOP``: multi-objective search of a trained supernet's sub-networks.

Objectives: kNN accuracy of the weight-sharing oracle (up) and cost (down): effective FLOPs (fvcore:
one multiply-add = one flop) or latency measured on the device, or predicted by a latency table built
on another (``--latency-table``, :mod:`nas.latency_table`). Budgets are Optuna constraints
(``trial.set_constraint``); an over-budget candidate is never evaluated for accuracy. The study
lives in a journal file in the run directory (or any ``--storage`` URL), so re-running the same
command resumes it, and several workers can share it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.budget import (
    Budget,
    BudgetError,
    check_budget_against,
    format_cost,
    parse_budget,
)
from nas.candidates import (
    CandidateEvaluator,
    CandidateResult,
    config_params,
    suggest_config,
)
from nas.latency_table import LatencyTable
from nas.oracle import build_oracle
from nas.pareto import cost_of, gate_speed_note, write_outputs
from nas.settings import SearchSettings, load_search_settings
from nas.study import (
    SAMPLERS,
    SearchError,
    claim_study,
    finished_records,
    finished_result,
    journal_storage,
    open_storage,
    open_study,
    redact,
    run_trials,
)
from search_spaces import SearchSpace, SubnetConfig
from supernet.cli import ArgumentParser, command
from supernet.devices import resolve_device
from supernet.io.checkpoint import find_latest_checkpoint, load_supernet
from supernet.nn.flops import FLOP_CONVENTION
from supernet.nn.models import SuperNet
from supernet.settings import flatten, settings_dict

__all__ = ["SearchRequest", "SearchSummary", "at_resolution", "main", "search", "seed_configs"]


@dataclass
class SearchRequest:
    checkpoint: Path
    flops_budget: Budget | None
    latency_budget: Budget | None
    objective: str  # "flops" or "latency"
    sampler: str
    trials: int
    timeout: float | None
    device: str
    storage: str | None  # None: a journal file in the run directory
    study_name: str | None
    seed: int
    out: Path | None
    settings: SearchSettings
    progress: bool = True
    latency_table: Path | None = None  # predict latency from this table (python -m nas.latency_table) instead of timing


@dataclass
class SearchSummary:
    out_dir: Path
    study: str
    objective: str
    budgets: dict[str, float]
    records: list[dict[str, Any]]  # every finished trial
    front: list[dict[str, Any]]
    best: dict[str, Any] | None  # the most accurate feasible record


def search(request: SearchRequest) -> SearchSummary:
    """Run (or resume) the study; write the outputs; return the front and the best record."""
    table = LatencyTable.load(request.latency_table) if request.latency_table is not None else None
    device = resolve_device(request.device, key="--device")
    supernet, payload = load_supernet(request.checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    evaluator = build_evaluator(supernet, payload, request, device, table)
    if table is not None:  # before anything is written, like the budgets
        table.check_matches(space=supernet.space.name, resolution=evaluator.resolution,
                            batch_size=request.settings.latency.batch_size)
    budgets = check_budgets(request, evaluator)  # before anything is written: a refused run leaves nothing
    study_name = request.study_name or default_study_name(supernet.space, request)
    out_dir = request.out or Path("runs") / "search" / study_name
    study, created = open_search_study(request, study_name, out_dir)
    claim_study(study, study_identity(request, payload, supernet.space, evaluator.resolution, budgets, table))
    queue_seeds(study, evaluator, budgets, created=created, shared=request.storage is not None)
    for record in finished_records(study):
        evaluator.remember(CandidateResult.from_dict(record))
    run_trials(study, make_objective(study, evaluator, request.objective), total=request.trials, timeout=request.timeout,
               progress=request.progress, heartbeat=_is_database(request.storage),
               grace_period=request.settings.storage.grace_period)
    records = finished_records(study)
    meta = {"study": study_name, "storage": redact(request.storage) if request.storage else str(out_dir / "study.journal"),
            "checkpoint": str(request.checkpoint.resolve()), "checkpoint_step": int(payload["step"]),
            "space": supernet.space.name, "resolution": evaluator.resolution, "sampler": request.sampler,
            "trials": len(records)}
    front, best = write_outputs(out_dir, records, objective=request.objective, budgets=budgets, meta=meta)
    return SearchSummary(out_dir, study_name, request.objective, budgets, records, front, best)


def _is_database(storage: str | None) -> bool:
    """Database storages (``postgresql://...``) keep heartbeats; journal files do not."""
    return storage is not None and "://" in storage


def open_search_study(request: SearchRequest, study_name: str, out_dir: Path) -> tuple[optuna.Study, bool]:
    """The study in ``--storage`` (or the run directory's journal file); True if this call created it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = request.settings
    storage = (open_storage(request.storage, heartbeat_interval=settings.storage.heartbeat_interval,
                            grace_period=settings.storage.grace_period)
               if request.storage else journal_storage(out_dir / "study.journal"))
    return open_study(storage, study_name, sampler=request.sampler, seed=request.seed,
                      population_size=settings.population_size, shared=request.storage is not None)


def build_evaluator(supernet: SuperNet, payload: dict[str, Any], request: SearchRequest,
                    device: torch.device, latency_table: LatencyTable | None = None) -> CandidateEvaluator:
    settings = request.settings
    oracle = build_oracle(supernet, payload, settings.data, settings.oracle, device)
    return CandidateEvaluator(
        supernet, oracle, flops_budget=request.flops_budget.value if request.flops_budget else None,
        latency_budget=request.latency_budget.value if request.latency_budget else None, latency=settings.latency,
        effective_flops_images=settings.effective_flops_images, device=device, latency_predictor=latency_table,
    )


def check_budgets(request: SearchRequest, evaluator: CandidateEvaluator) -> dict[str, float]:
    """``{kind: value}`` of the budgets; refuses one below the smallest network, warns on one that does not bind."""
    space = evaluator.supernet.space
    budgets: dict[str, float] = {}
    for budget in (request.flops_budget, request.latency_budget):
        if budget is None:
            continue
        smallest, largest = (_cost_of(evaluator, space.min_config(), budget.kind),
                             _cost_of(evaluator, space.max_config(), budget.kind))
        if budget.kind == "latency":  # two timings of tiny networks can come out in either order on a busy machine
            smallest, largest = sorted((smallest, largest))
        warning = check_budget_against(budget, smallest=smallest, largest=largest)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        budgets[budget.kind] = budget.value
    return budgets


def _cost_of(evaluator: CandidateEvaluator, cfg: SubnetConfig, kind: str) -> float:
    if kind == "latency":
        network = evaluator.supernet.extract(cfg).to(evaluator.device).eval()
        return float(evaluator.measure_latency(network, cfg)["seconds"])
    return float(evaluator.static_flops(cfg))


def study_identity(request: SearchRequest, payload: dict[str, Any], space: SearchSpace, resolution: int,
                   budgets: dict[str, float], latency_table: LatencyTable | None = None) -> dict[str, Any]:
    """Everything that changes a trial's score, as flat ``key: value`` (see :func:`nas.study.claim_study`)."""
    settings = settings_dict(request.settings)
    latency_matters = request.objective == "latency" or "latency" in budgets  # times are then part of the score
    identity: dict[str, Any] = {
        "checkpoint": str(request.checkpoint.resolve()), "checkpoint_step": int(payload["step"]), "space": space.name,
        "objective": request.objective, "resolution": resolution, "effective_flops_images": settings["effective_flops_images"],
        **{f"budgets.{kind}": value for kind, value in budgets.items()},
        **flatten(settings["data"], "data."), **flatten(settings["oracle"], "oracle."),
    }
    if latency_matters and latency_table is not None:  # predicted: the table is what was "measured on"
        identity.update({"device": f"latency table {latency_table.sha256[:12]} ({latency_table.device})",
                         "latency_table.sha256": latency_table.sha256, "latency_table.device": latency_table.device,
                         "latency.batch_size": settings["latency"]["batch_size"]})
    elif latency_matters:
        identity.update({"device": str(resolve_device(request.device, key="--device")),
                         **flatten(settings["latency"], "latency.")})
    return identity


def queue_seeds(study: optuna.Study, evaluator: CandidateEvaluator, budgets: dict[str, float], *, created: bool,
                shared: bool) -> None:
    """Queue the seed configs (max, min, widest uniform under the FLOP budget) not already held.

    Optuna's ``skip_if_exists`` also counts failed trials, so a seed whose run was interrupted would
    never be tried again; only finished, running or queued trials make a seed redundant. With a
    shared storage only the worker that created the study queues them.
    """
    space, gates = evaluator.supernet.space, evaluator.supernet.with_gates
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    held = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False, states=alive)]
    for cfg in seed_configs(space, evaluator, budgets.get("flops"), evaluator.resolution):
        params = config_params(cfg, space, gates_available=gates)
        if created or (params not in held and not shared):
            study.enqueue_trial(params)


def make_objective(study: optuna.Study, evaluator: CandidateEvaluator,
                   objective: str) -> Callable[[optuna.Trial], tuple[float, float]]:
    """(accuracy, cost) of a trial's config, its budget violations set as Optuna constraints."""
    space, gates = evaluator.supernet.space, evaluator.supernet.with_gates

    def evaluate(trial: optuna.Trial) -> tuple[float, float]:
        cfg = suggest_config(trial, space, gates_available=gates, resolution=evaluator.resolution)
        known = finished_result(study, cfg.to_dict())  # another worker may have scored it
        result = CandidateResult.from_dict(known) if known else evaluator.evaluate(cfg)
        for kind, violation in result.violations.items():
            trial.set_constraint(kind, violation)
        trial.set_user_attr("result", result.to_dict())
        # An over-budget candidate reports accuracy 0: it was not measured, and constrained
        # domination ranks it below every feasible one anyway.
        accuracy = result.accuracy if result.accuracy is not None else 0.0
        cost = result.cost(objective) if result.latency is not None or objective == "flops" else float("inf")
        return accuracy, cost

    return evaluate


def seed_configs(space: SearchSpace, evaluator: CandidateEvaluator, flops_budget: float | None, resolution: int) -> list[SubnetConfig]:
    """Max, min, and the widest uniform width whose FLOPs fit the budget (gates off)."""
    configs = [space.max_config(), space.min_config()]
    if flops_budget is not None:
        for multiplier in sorted({0.25 + i / 8 for i in range(7)}, reverse=True):
            cfg = space.uniform_config(multiplier)
            if evaluator.static_flops(cfg) <= flops_budget:
                configs.append(cfg)
                break
    return list(dict.fromkeys(at_resolution(cfg, resolution) for cfg in configs))


def at_resolution(cfg: SubnetConfig, resolution: int) -> SubnetConfig:
    return SubnetConfig(cfg.space, dict(cfg.channels), cfg.gate_thresholds, resolution)


def default_study_name(space: SearchSpace, request: SearchRequest) -> str:
    budgets = "-".join(str(b).replace(" ", "") for b in (request.flops_budget, request.latency_budget) if b is not None)
    name = f"{space.name}-{request.objective}-{budgets or 'nobudget'}-{request.sampler}-seed{request.seed}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# -- command line --------------------------------------------------------------------------------
def print_table(summary: SearchSummary) -> None:
    objective, front = summary.objective, summary.front
    print(f"\nPareto front of {summary.study} ({len(front)} of {len(summary.records)} trials; {FLOP_CONVENTION}):")
    batch = next((r["latency"]["batch_size"] for r in front if r.get("latency")), 1)
    batch1 = batch != 1 and any("1" in (r.get("latency_by_batch") or {}) for r in front)
    print(f"{'trial':>6} {'kNN top-1':>10} {'MFLOPs':>10} {'eff. MFLOPs':>12} {'params (M)':>11} "
          f"{f'latency b{batch}':>12}" + (f" {'latency b1':>12}" if batch1 else "") + "  gates")
    for r in front:
        latency = r.get("latency")
        latency_text = f"{latency['seconds'] * 1e3:.2f} ms" if latency else "-"
        if batch1:
            at_one = (r.get("latency_by_batch") or {}).get("1")
            at_one_text = f"{at_one['seconds'] * 1e3:.2f} ms" if at_one else "-"
            latency_text = f"{latency_text:>12} {at_one_text:>12}"
        print(f"{r['trial']:>6} {r['accuracy']:>10.2%} {r['flops'] / 1e6:>10.2f} {r['effective_flops'] / 1e6:>12.2f} "
              f"{r['params'] / 1e6:>11.3f} {latency_text:>12}  {'on' if r['config']['gate_thresholds'] else 'off'}")
    for note in filter(None, map(gate_speed_note, front)):
        print(f"  {note}")
    best = summary.best
    if best is not None:
        print(f"best feasible: trial {best['trial']}, kNN {best['accuracy']:.2%} at "
              f"{format_cost(objective, cost_of(best, objective))}")  # type: ignore[arg-type]
    else:
        print("no feasible trial was evaluated; raise the budget or run more trials")
    if front and front[0].get("latency"):
        latency = front[0]["latency"]
        how = f"predicted by the table {latency.get('table')} for" if latency["method"] == "table" else "measured on"
        print(f"latency {how} {latency['device']}, batch size {latency['batch_size']}")
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
