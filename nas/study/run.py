"""One search, start to end: load the supernet, check the budgets, open (or resume) the study, run its
trials, write the outputs (:func:`search`; ``python -m nas.search`` is its command line).

Objectives: kNN accuracy of the weight-sharing oracle (up) and cost (down): effective FLOPs (fvcore:
one multiply-add = one flop) or latency measured on the device, or predicted by a latency table built
on another (``--latency-table``, :mod:`nas.latency.table`). Budgets are Optuna constraints
(``trial.set_constraint``); an over-budget candidate is never evaluated for accuracy. The study
lives in a journal file in the run directory (or any ``--storage`` URL), so re-running the same
command resumes it, and several workers can share it.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.budget import Budget, check_budget_against, format_seconds
from nas.latency.plan import LatencyPlan
from nas.latency.table import LatencyTable
from nas.settings import SearchSettings
from nas.study.candidates import (
    CandidateEvaluator,
    CandidateResult,
    config_params,
    suggest_config,
)
from nas.study.oracle import build_oracle
from nas.study.pareto import objective_value, write_outputs
from nas.study.storage import (
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
from supernet.devices import resolve_device
from supernet.io.checkpoint import load_supernet
from supernet.nn.models import SuperNet
from supernet.settings import flatten, settings_dict

__all__ = ["SearchRequest", "SearchSummary", "at_resolution", "check_budgets", "default_study_name", "make_objective",
           "queue_seeds", "search", "seed_configs", "study_identity"]


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
    best: dict[str, Any] | None  # the feasible record the search's score ranks first (best.json)
    references: dict[str, float] | None = None  # kNN of raw pixels and of the untrained full network


def search(request: SearchRequest) -> SearchSummary:
    """Run (or resume) the study; write the outputs; return the front and the best record."""
    table = LatencyTable.load(request.latency_table) if request.latency_table is not None else None
    device = resolve_device(request.device, key="--device")
    supernet, payload = load_supernet(request.checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    evaluator = build_evaluator(supernet, payload, request, device, table)
    if table is not None:  # before anything is written, like the budgets
        latency = request.settings.latency
        table.check_matches(space=supernet.space.name, resolution=evaluator.resolution, batch_size=latency.batch_size,
                            runtime=_choice(latency.runtime), dtype=_choice(latency.dtype))
    budgets = check_budgets(request, evaluator)  # before anything is written: a refused run leaves nothing
    study_name = request.study_name or default_study_name(supernet.space, request)
    out_dir = request.out or Path("runs") / "search" / study_name
    study, created = open_search_study(request, study_name, out_dir)
    claim_study(study, study_identity(request, payload, supernet.space, evaluator.resolution, budgets, table,
                                      evaluator.latency_plan))
    adopt_latency_anchor(study, evaluator)
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
    meta["references"] = evaluator.oracle.references()
    front, best = write_outputs(out_dir, records, objective=request.objective, budgets=budgets, meta=meta)
    return SearchSummary(out_dir, study_name, request.objective, budgets, records, front, best, meta["references"])


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
    """``{kind: value}`` of the budgets; refuses one below the smallest network, warns on one that does not bind.

    A latency budget is checked against the smallest and the full network timed as every candidate is
    (same runtime, precision, batch and warm-up) and side by side (interleaved, one measurement), so
    neither is timed alone while the machine is still coming out of idle.
    """
    space = evaluator.supernet.space
    budgets: dict[str, float] = {}
    for budget in (request.flops_budget, request.latency_budget):
        if budget is None:
            continue
        if budget.kind == "latency":
            smallest, largest = evaluator.config_latencies([space.min_config(), space.max_config()])
            if smallest > largest:
                print(f"note: the smallest sub-network measured slower than the full one ({format_seconds(smallest)} "
                      f"vs {format_seconds(largest)}, {_timed_as(evaluator)}): there latency does not follow the "
                      "network's work (per-op overhead dominates); the budget is checked against the two in order",
                      file=sys.stderr)
                smallest, largest = largest, smallest
        else:
            smallest, largest = float(evaluator.static_flops(space.min_config())), float(evaluator.static_flops(space.max_config()))
        warning = check_budget_against(budget, smallest=smallest, largest=largest)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        budgets[budget.kind] = budget.value
    return budgets


def _timed_as(evaluator: CandidateEvaluator) -> str:
    plan = evaluator.latency_plan
    return "predicted by the latency table" if plan is None else f"{plan.describe()} at batch {plan.batch_size}"


def _choice(value: Any) -> str | None:
    """A ``latency.runtime``/``latency.dtype`` setting as a string, None for ``auto``."""
    text = str(getattr(value, "value", value))
    return None if text == "auto" else text


def study_identity(request: SearchRequest, payload: dict[str, Any], space: SearchSpace, resolution: int,
                   budgets: dict[str, float], latency_table: LatencyTable | None = None,
                   latency_plan: LatencyPlan | None = None) -> dict[str, Any]:
    """Everything that changes a trial's score, as flat ``key: value`` (see :func:`nas.study.storage.claim_study`).

    When latency is part of the score: the table it is predicted from, or how it is measured
    (:meth:`nas.latency.plan.LatencyPlan.identity`: device, runtime, precision, batch, warm-up, repeats,
    threads, versions).
    """
    settings = settings_dict(request.settings)
    latency_matters = request.objective == "latency" or "latency" in budgets  # times are then part of the score
    identity: dict[str, Any] = {
        "checkpoint": str(request.checkpoint.resolve()), "checkpoint_step": int(payload["step"]), "space": space.name,
        "objective": request.objective, "resolution": resolution, "effective_flops_images": settings["effective_flops_images"],
        **{f"budgets.{kind}": value for kind, value in budgets.items()},
        **flatten(settings["data"], "data."), **flatten(settings["oracle"], "oracle."),
    }
    if payload.get("routers") is not None and latency_table is None:  # routed candidates are part of the study
        identity["routers"] = routers_digest(payload["routers"])
    if latency_matters and latency_table is not None:  # predicted: the table is what was "measured on"
        identity.update({"device": f"latency table {latency_table.sha256[:12]} ({latency_table.device})",
                         "latency_table.sha256": latency_table.sha256, "latency_table.device": latency_table.device,
                         "latency.runtime": latency_table.runtime, "latency.dtype": latency_table.dtype,
                         "latency.batch_size": latency_table.batch_size})
    elif latency_matters:
        plan = latency_plan or LatencyPlan.from_settings(request.settings.latency,
                                                         resolve_device(request.device, key="--device"))
        identity.update(plan.identity())
    return identity


def adopt_latency_anchor(study: optuna.Study, evaluator: CandidateEvaluator) -> None:
    """Anchored timing scales every trial by the anchor's latency: the figures the study's first run measured,
    stored with it, so resumed runs and other workers report on the same scale. A new study stores this run's."""
    plan = evaluator.latency_plan
    if plan is None or plan.anchor is None or not plan.anchored:
        return
    stored = study.user_attrs.get("latency_anchor_seconds")
    if stored:
        plan.anchor.adopt(stored)
    for batch in plan.batch_sizes:  # measured now (if not stored), so every trial of this run scales alike
        plan.anchor.seconds(batch, plan.runtime, plan.dtype, threads=plan.threads, device=plan.device)
    if plan.anchor.known() != stored:
        study.set_user_attr("latency_anchor_seconds", {**plan.anchor.known(), **(stored or {})})


def routers_digest(record: dict[str, Any]) -> str:
    """Identity of a checkpoint's routers: their levels and a SHA-256 of their weights (retrained routers differ)."""
    digest = hashlib.sha256()
    for name in sorted(record["state"]):
        digest.update(name.encode())
        digest.update(record["state"][name].detach().cpu().contiguous().numpy().tobytes())
    return f"levels {record['settings']['levels']} sha256 {digest.hexdigest()[:16]}"


def queue_seeds(study: optuna.Study, evaluator: CandidateEvaluator, budgets: dict[str, float], *, created: bool,
                shared: bool) -> None:
    """Queue the seed configs (max, min, widest uniform under the FLOP budget) not already held.

    Optuna's ``skip_if_exists`` also counts failed trials, so a seed whose run was interrupted would
    never be tried again; only finished, running or queued trials make a seed redundant. With a
    shared storage only the worker that created the study queues them.
    """
    space, gates, routing = evaluator.supernet.space, evaluator.supernet.with_gates, evaluator.routing_available
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    held = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False, states=alive)]
    for cfg in seed_configs(space, evaluator, budgets.get("flops"), evaluator.resolution, routing=routing):
        params = config_params(cfg, space, gates_available=gates, routing_available=routing)
        if created or (params not in held and not shared):
            study.enqueue_trial(params)


def make_objective(study: optuna.Study, evaluator: CandidateEvaluator,
                   objective: str) -> Callable[[optuna.Trial], tuple[float, float]]:
    """(accuracy, cost) of a trial's config, its budget violations set as Optuna constraints."""
    space, gates, routing = evaluator.supernet.space, evaluator.supernet.with_gates, evaluator.routing_available

    def evaluate(trial: optuna.Trial) -> tuple[float, float]:
        cfg = suggest_config(trial, space, gates_available=gates, routing_available=routing,
                             resolution=evaluator.resolution)
        known = finished_result(study, cfg.to_dict())  # another worker may have scored it
        result = CandidateResult.from_dict(known) if known else evaluator.evaluate(cfg)
        for kind, violation in result.violations.items():
            trial.set_constraint(kind, violation)
        trial.set_user_attr("result", result.to_dict())
        # An over-budget candidate reports the lowest score: it was not measured, and constrained
        # domination ranks it below every feasible one anyway.
        value = objective_value(result.to_dict()) if result.accuracy is not None else float("-inf")
        cost = result.cost(objective) if result.latency is not None or objective == "flops" else float("inf")
        return value, cost

    return evaluate


def seed_configs(space: SearchSpace, evaluator: CandidateEvaluator, flops_budget: float | None, resolution: int, *,
                 routing: bool = False) -> list[SubnetConfig]:
    """Max, min, and the widest uniform width whose FLOPs fit the budget (gates off); with routers also the
    widest of those routed at the middle of the threshold range."""
    configs = [space.max_config(), space.min_config()]
    if flops_budget is not None:
        for multiplier in sorted({0.25 + i / 8 for i in range(7)}, reverse=True):
            cfg = space.uniform_config(multiplier)
            if evaluator.static_flops(cfg) <= flops_budget:
                configs.append(cfg)
                break
    if routing and space.router_blocks:
        middle = sum(space.route_threshold_range) / 2
        configs.append(configs[2 if len(configs) > 2 else 0].with_routes(dict.fromkeys(space.router_blocks, middle)))
    return list(dict.fromkeys(at_resolution(cfg, resolution) for cfg in configs))


def at_resolution(cfg: SubnetConfig, resolution: int) -> SubnetConfig:
    return SubnetConfig(cfg.space, dict(cfg.channels), cfg.gate_thresholds, resolution, cfg.route_thresholds)


def default_study_name(space: SearchSpace, request: SearchRequest) -> str:
    budgets = "-".join(str(b).replace(" ", "") for b in (request.flops_budget, request.latency_budget) if b is not None)
    name = f"{space.name}-{request.objective}-{budgets or 'nobudget'}-{request.sampler}-seed{request.seed}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
