"""``python -m nas.search --budget 1GFLOP``: multi-objective search of a trained supernet's sub-networks.

Objectives: kNN accuracy of the weight-sharing oracle (up) and cost (down): effective FLOPs (fvcore:
one multiply-add = one flop) or latency measured on the device. Budgets are Optuna constraints
(``trial.set_constraint``); an over-budget candidate is never evaluated for accuracy. The study
lives in a journal file in the run directory (or any ``--storage`` URL), so re-running the same
command resumes it, and several workers can share it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import optuna
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from nas.budget import Budget, BudgetError, check_budget_against, format_cost, parse_budget
from nas.candidates import CandidateEvaluator, CandidateResult, LatencySettings, config_params, suggest_config
from nas.oracle import build_oracle
from nas.pareto import FLOP_NOTE, cost_of, write_outputs
from search_spaces import SearchSpace, SubnetConfig
from supernet.checkpoint import CheckpointError, find_latest_checkpoint, load_supernet
from supernet.data import DataError
from supernet.models import SuperNet

CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "search.yaml"
SAMPLERS = ("nsga2", "tpe", "random")


class SearchError(ValueError):
    """A search setting the user can fix; one line naming it and what would be right."""


# -- settings (Hydra-style key=value overrides on configs/search.yaml) ----------------------------
@dataclass
class DataOverrides:
    name: Optional[str] = None
    root: Optional[str] = None
    holdout_size: Optional[int] = None
    download: bool = False


@dataclass
class OracleSettings:
    calibration_images: int = 2000
    bank_size: int = 5000
    val_size: Optional[int] = None
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    seed: int = 0


@dataclass
class LatencyOverrides:
    batch_size: int = 1
    warmup: int = 5
    repeats: int = 20
    threads: Optional[int] = 1


# Read by nas.evaluate only: the linear probe on frozen features (supernet.evaluation.linear).
@dataclass
class ProbeSettings:
    epochs: int = 100
    lr: float = 1.0
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class StorageSettings:
    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats (database storages)
    grace_period: int = 60  # a trial silent this long belongs to a dead worker and is failed


@dataclass
class SearchSettings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    data: DataOverrides = field(default_factory=DataOverrides)
    oracle: OracleSettings = field(default_factory=OracleSettings)
    latency: LatencyOverrides = field(default_factory=LatencyOverrides)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    effective_flops_images: int = 256
    population_size: int = 24


def load_settings(overrides: list[str]) -> Any:
    """configs/search.yaml under the typed schema, then ``key=value`` overrides (unknown keys rejected)."""
    schema = OmegaConf.structured(SearchSettings)
    try:
        settings = OmegaConf.merge(schema, OmegaConf.load(CONFIG_PATH)) if CONFIG_PATH.exists() else schema
        bad = [item for item in overrides if "=" not in item]
        if bad:
            raise SearchError(f"override {bad[0]!r}: expected key=value, e.g. oracle.bank_size=2000")
        return OmegaConf.merge(settings, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as error:
        first = str(error).strip().splitlines()[0]
        raise SearchError(f"override: {first}; valid keys are those in {CONFIG_PATH.name}") from None


# -- the search ----------------------------------------------------------------------------------
@dataclass
class SearchRequest:
    checkpoint: Path
    flops_budget: Budget | None
    latency_budget: Budget | None
    objective: str
    sampler: str
    trials: int
    timeout: float | None
    device: str
    storage: str | None
    study_name: str | None
    seed: int
    out: Path | None
    settings: Any
    progress: bool = True


def search(request: SearchRequest) -> dict[str, Any]:
    """Run (or resume) the study; write the outputs; return a summary with the front and best record."""
    device = resolve_device(request.device)
    supernet, payload = load_supernet(request.checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    space = supernet.space
    settings = request.settings
    evaluator = _build_evaluator(supernet, payload, request, device)
    resolution = evaluator.resolution
    budgets = _check_budgets(request, evaluator, space)
    study_name = request.study_name or default_study_name(space, request)
    out_dir = request.out or Path("runs") / "search" / study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = (open_storage(request.storage, heartbeat_interval=settings.storage.heartbeat_interval,
                            grace_period=settings.storage.grace_period)
               if request.storage else journal_storage(out_dir / "study.journal"))
    sampler = build_sampler(request.sampler, seed=request.seed, population_size=settings.population_size)
    try:  # exactly one worker creates the study (the storage enforces it) and queues the seed trials
        study = optuna.create_study(storage=storage, study_name=study_name, directions=["maximize", "minimize"],
                                    sampler=sampler)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
        created = False
    held = len(study.get_trials(deepcopy=False))
    if held or request.storage:
        # A resumed study must not replay its earlier proposals, and workers sharing a study must
        # not propose the same ones: the sampler seed moves with the trials held and the process.
        worker = os.getpid() if request.storage else 0
        seed = int(np.random.SeedSequence([request.seed, held, worker]).generate_state(1)[0])
        study.sampler = build_sampler(request.sampler, seed=seed, population_size=settings.population_size)
    identity = {"checkpoint": str(Path(request.checkpoint).resolve()), "checkpoint_step": int(payload["step"]),
                "space": space.name, "objective": request.objective, "budgets": budgets, "resolution": resolution}
    _claim_study(study, identity)
    records = [trial_record(t) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for record in records:
        evaluator.remember(CandidateResult(**{k: record[k] for k in CandidateResult.__dataclass_fields__}))
    gates_available = supernet.with_gates
    # Optuna's skip_if_exists also counts failed trials, so a seed whose run was interrupted would never
    # be tried again; only finished, running or queued trials make a seed redundant.
    alive = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    queued = [t.system_attrs.get("fixed_params", t.params) for t in study.get_trials(deepcopy=False, states=alive)]
    for cfg in seed_configs(space, evaluator, budgets.get("flops"), resolution):
        params = config_params(cfg, space, gates_available=gates_available)
        if created or (params not in queued and not request.storage):
            study.enqueue_trial(params)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        cfg = suggest_config(trial, space, gates_available=gates_available, resolution=resolution)
        result = _finished_result(study, cfg) or evaluator.evaluate(cfg)  # another worker may have scored it
        for kind, violation in result.violations.items():
            trial.set_constraint(kind, violation)
        trial.set_user_attr("result", result.to_dict())
        # An over-budget candidate reports accuracy 0: it was not measured, and constrained
        # domination ranks it below every feasible one anyway.
        accuracy = result.accuracy if result.accuracy is not None else 0.0
        cost = result.cost(request.objective) if result.latency is not None or request.objective == "flops" else float("inf")
        return accuracy, cost

    run_trials(study, objective, total=request.trials, timeout=request.timeout, progress=request.progress,
               heartbeat=isinstance(storage, optuna.storages.RDBStorage), grace_period=settings.storage.grace_period)
    records = [trial_record(t) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    meta = {"study": study_name, "storage": _redact(request.storage) if request.storage else str(out_dir / "study.journal"),
            "checkpoint": identity["checkpoint"], "checkpoint_step": identity["checkpoint_step"],
            "space": space.name, "resolution": resolution, "sampler": request.sampler, "trials": len(records)}
    front, best = write_outputs(out_dir, records, objective=request.objective, budgets=budgets, meta=meta)
    return {"out_dir": str(out_dir), "study": study_name, "front": front, "best": best, "records": records,
            "budgets": budgets, "objective": request.objective}


def run_trials(
    study: optuna.Study, objective: Any, *, total: int, timeout: float | None, progress: bool,
    heartbeat: bool = False, grace_period: float = 60.0,
) -> None:
    """Run trials one at a time until the study holds ``total`` finished trials (all workers together).

    Each trial runs through ``study.optimize(n_trials=1)``, so RDB storages keep its heartbeat and
    fail the stale trials of killed workers; on a journal file, trials of dead processes on this
    host are failed here. A worker starts a trial only while finished + running trials are short
    of ``total``; if a race hands it one beyond that, the trial is pruned before any evaluation.
    """
    states = optuna.trial.TrialState
    started = time.monotonic()
    bar = tqdm(total=total, initial=min(_count(study, (states.COMPLETE,)), total), desc="search",
               disable=not progress, file=sys.stdout)

    def guarded(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        ahead = [t for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING)) if t.number < trial.number]
        if len(ahead) >= total:
            raise optuna.TrialPruned("surplus trial: the study already holds enough")
        return objective(trial)

    try:
        while True:
            fail_orphaned_trials(study, heartbeat=heartbeat, grace_period=grace_period)
            done = _count(study, (states.COMPLETE,))
            bar.update(min(done, total) - bar.n)
            if done >= total or (timeout is not None and time.monotonic() - started > timeout):
                break
            if done + _count(study, (states.RUNNING,)) >= total:
                time.sleep(1.0)  # other workers hold the remaining trials; wait for them to finish or fail
                continue
            study.optimize(guarded, n_trials=1, catch=(), gc_after_trial=False)
            bar.set_postfix(best=f"{_best_accuracy(study):.2%}")
    finally:
        bar.close()


def fail_orphaned_trials(study: optuna.Study, *, heartbeat: bool = False, grace_period: float = 60.0) -> list[int]:
    """Fail RUNNING trials whose worker is gone, so they are not counted and block nothing.

    A trial records its worker (host, pid) as it starts. On storages with ``heartbeat`` (databases)
    Optuna fails trials whose heartbeat stopped; elsewhere (the journal file) a trial whose worker
    process on this host has died is failed here. Either way, a trial that never recorded its
    worker and is older than ``grace_period`` seconds lost its process before it began.
    """
    host, now = socket.gethostname(), datetime.datetime.now()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            started = trial.datetime_start or now
            orphaned = (now - started).total_seconds() > grace_period
        else:
            orphaned = not heartbeat and worker.get("host") == host and not _process_alive(int(worker.get("pid", -1)))
        if orphaned:
            try:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                failed.append(trial.number)
            except (RuntimeError, ValueError):
                pass  # another worker failed it first
    return failed


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redact(url: str) -> str:
    """A storage URL without its password, for output files."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _count(study: optuna.Study, states: tuple) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def _best_accuracy(study: optuna.Study) -> float:
    accuracies = [trial_record(t)["accuracy"] for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return max((a for a in accuracies if a is not None), default=0.0)


def _finished_result(study: optuna.Study, cfg: SubnetConfig) -> CandidateResult | None:
    """The result a finished trial of any worker recorded for ``cfg`` (the study is the shared cache)."""
    wanted = cfg.to_dict()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        result = trial.user_attrs.get("result")
        if result is not None and result["config"] == wanted:
            return CandidateResult(**{k: result[k] for k in CandidateResult.__dataclass_fields__})
    return None


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"trial": trial.number, **trial.user_attrs["result"]}


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


def build_sampler(name: str, *, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"--sampler: {name!r} is not a sampler; expected one of {', '.join(SAMPLERS)}")


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    """A journal-file study: safe for several worker processes on one host."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_storage(url: str, *, heartbeat_interval: int, grace_period: int) -> optuna.storages.BaseStorage:
    """An Optuna storage from ``--storage``: a database URL (with worker heartbeats) or a journal file path."""
    if "://" not in url:
        return journal_storage(Path(url))
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; they fail dead workers' trials
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        except Exception as error:  # driver missing, server unreachable, bad URL: all one line for the user
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            # Workers started together race to create Optuna's tables; the losers see a duplicate key.
            if "duplicate key" in first or "already exists" in first:
                if attempt < attempts - 1:
                    time.sleep(0.5 * (attempt + 1) + random.random())
                    continue
            raise SearchError(f"--storage: cannot open {_redact(url)!r} ({first[:200]}); for PostgreSQL install "
                              "slimnas[postgres] and pass postgresql://user:password@host:5432/database") from None
    raise AssertionError("unreachable")


def default_study_name(space: SearchSpace, request: SearchRequest) -> str:
    budgets = "-".join(str(b).replace(" ", "") for b in (request.flops_budget, request.latency_budget) if b is not None)
    name = f"{space.name}-{request.objective}-{budgets or 'nobudget'}-{request.sampler}-seed{request.seed}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _claim_study(study: optuna.Study, identity: dict[str, Any]) -> None:
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        differing = sorted(k for k in identity if stored.get(k) != identity[k])
        raise SearchError(
            f"--study-name: study {study.study_name!r} was run with different {', '.join(differing)} "
            f"({', '.join(f'{k}={stored.get(k)!r}' for k in differing)}); use another --study-name or --out"
        )


def _build_evaluator(supernet: SuperNet, payload: dict[str, Any], request: SearchRequest, device: torch.device) -> CandidateEvaluator:
    settings = request.settings
    oracle = build_oracle(supernet, payload, settings, device)
    latency = LatencySettings(**OmegaConf.to_container(settings.latency))  # type: ignore[arg-type]
    return CandidateEvaluator(
        supernet, oracle, flops_budget=request.flops_budget.value if request.flops_budget else None,
        latency_budget=request.latency_budget.value if request.latency_budget else None, latency=latency,
        effective_flops_images=settings.effective_flops_images, device=device,
    )


def _check_budgets(request: SearchRequest, evaluator: CandidateEvaluator, space: SearchSpace) -> dict[str, float]:
    budgets: dict[str, float] = {}
    for budget in (request.flops_budget, request.latency_budget):
        if budget is None:
            continue
        smallest, largest = (_cost_of(evaluator, space.min_config(), budget.kind),
                             _cost_of(evaluator, space.max_config(), budget.kind))
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


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu`` or ``cuda[:N]``; a one-line error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SearchError("--device: cuda was asked for but no CUDA device is available; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise SearchError(f"--device: {name!r} is not valid; expected auto, cpu, cuda or cuda:N")
    return torch.device(name)


# -- command line --------------------------------------------------------------------------------
def print_table(summary: dict[str, Any]) -> None:
    objective = summary["objective"]
    front = summary["front"]
    print(f"\nPareto front of {summary['study']} ({len(front)} of {len(summary['records'])} trials; {FLOP_NOTE}):")
    print(f"{'trial':>6} {'kNN top-1':>10} {'MFLOPs':>10} {'eff. MFLOPs':>12} {'params (M)':>11} {'latency':>12}  gates")
    for r in front:
        latency = r.get("latency")
        latency_text = f"{latency['seconds'] * 1e3:.2f} ms" if latency else "-"
        print(f"{r['trial']:>6} {r['accuracy']:>10.2%} {r['flops'] / 1e6:>10.2f} {r['effective_flops'] / 1e6:>12.2f} "
              f"{r['params'] / 1e6:>11.3f} {latency_text:>12}  {'on' if r['config']['gate_thresholds'] else 'off'}")
    best = summary["best"]
    if best is not None:
        print(f"best feasible: trial {best['trial']}, kNN {best['accuracy']:.2%} at "
              f"{format_cost(objective, cost_of(best, objective))}")  # type: ignore[arg-type]
    else:
        print("no feasible trial was evaluated; raise the budget or run more trials")
    if front and front[0].get("latency"):
        print(f"latency measured on {front[0]['latency']['device']}, batch size {front[0]['latency']['batch_size']}")
    print(f"outputs: {summary['out_dir']}/{{pareto.json,pareto.csv,pareto.png,best.json}}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nas.search",
        description="Search a trained supernet's sub-networks for the Pareto front of kNN accuracy vs cost. "
        "FLOPs follow fvcore's convention: one multiply-add = one flop (ResNet-50 at 224 px = 4.11 GFLOPs).",
        epilog="Extra key=value arguments override configs/search.yaml, e.g. oracle.bank_size=2000 data.root=./data",
    )
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="supernet checkpoint (default: the newest checkpoint.pt under the current directory)")
    parser.add_argument("--budget", default=None,
                        help="FLOP budget (1GFLOP, 300MFLOPs, 5e8; one multiply-add = one flop) or latency (2.5ms, 200us)")
    parser.add_argument("--latency-budget", default=None, help="latency budget on --device, e.g. 2.5ms or 200us")
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
                         out=args.out, settings=load_settings(args.overrides), progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    # intermixed: key=value overrides may sit between options (parse_args takes only the first run of them)
    args = build_parser().parse_intermixed_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        summary = search(request_from_args(args))
    except (BudgetError, SearchError, CheckpointError, DataError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept in the study; re-run the same command to resume", file=sys.stderr)
        return 130
    print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
