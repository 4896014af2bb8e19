"""The Optuna side of the search: storages, samplers, the study's identity, and running trials.

A study lives in a journal file (one host, several processes) or a database (``--storage
postgresql://...``, many hosts). Its identity (checkpoint, space, objective, budgets and every
setting that changes a score) is stored with it on creation; a run whose identity differs is
refused, so differently scored trials never mix in one front. Trials run one at a time through
``study.optimize(n_trials=1)`` so database storages keep their heartbeats.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search_spaces import UserError, first_line

__all__ = ["SAMPLERS", "SearchError", "build_sampler", "claim_study", "fail_orphaned_trials", "journal_storage",
           "open_storage", "open_study", "redact", "run_trials", "trial_record"]

SAMPLERS = ("nsga2", "tpe", "random")


class SearchError(UserError):
    """A search setting the user can fix; one line naming it and what would be right."""


# -- storages and samplers ---------------------------------------------------------------------------
def journal_storage(path: str | os.PathLike[str]) -> optuna.storages.JournalStorage:
    """A journal-file study: safe for several worker processes on one host."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def open_storage(url: str, *, heartbeat_interval: int, grace_period: int) -> optuna.storages.BaseStorage:
    """An Optuna storage from ``--storage``: a database URL (with worker heartbeats) or a journal file path."""
    if "://" not in url:
        return journal_storage(url)
    attempts = 5
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental; they fail dead workers' trials
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        except Exception as error:  # driver missing, server unreachable, bad URL: all one line for the user
            reason = first_line(error)
            # Workers started together race to create Optuna's tables; the losers see a duplicate key.
            if ("duplicate key" in reason or "already exists" in reason) and attempt < attempts - 1:
                time.sleep(0.5 * (attempt + 1) + random.random())
                continue
            raise SearchError(f"--storage: cannot open {redact(url)!r} ({reason}); for PostgreSQL install "
                              "slimnas[postgres] and pass postgresql://user:password@host:5432/database") from None
    raise AssertionError("unreachable")


def build_sampler(name: str, *, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SearchError(f"--sampler: {name!r} is not a sampler; expected one of {', '.join(SAMPLERS)}")


def open_study(storage: optuna.storages.BaseStorage, name: str, *, sampler: str, seed: int, population_size: int,
               shared: bool) -> tuple[optuna.Study, bool]:
    """Create study ``name`` (maximise accuracy, minimise cost) or load it; True if this call created it.

    Exactly one worker creates a study (the storage enforces it). A resumed study must not replay
    its earlier proposals, and workers sharing a study must not propose the same ones: the sampler
    seed moves with the trials held and, for a ``shared`` storage, the process.
    """
    build = lambda sampler_seed: build_sampler(sampler, seed=sampler_seed, population_size=population_size)  # noqa: E731
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                    sampler=build(seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=build(seed))
        created = False
    held = len(study.get_trials(deepcopy=False))
    if held or shared:
        worker = os.getpid() if shared else 0
        study.sampler = build(int(np.random.SeedSequence([seed, held, worker]).generate_state(1)[0]))
    return study, created


def claim_study(study: optuna.Study, identity: dict[str, Any]) -> None:
    """Store ``identity`` (flat ``key: value``) with a new study, or refuse a study that holds another.

    The refusal names the first differing setting as the user writes it (``oracle.bank_size``).
    """
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        return
    differing = sorted(key for key in {*stored, *identity} if stored.get(key) != identity.get(key))
    if differing:
        key = differing[0]
        more = f" (and {len(differing) - 1} more: {', '.join(differing[1:4])})" if len(differing) > 1 else ""
        raise SearchError(
            f"{key}: study {study.study_name!r} was scored with {stored.get(key)!r}, this run asks for "
            f"{identity.get(key)!r}{more}; use the same settings, another --study-name, or another --out"
        )


# -- running trials -----------------------------------------------------------------------------------
def run_trials(
    study: optuna.Study, objective: Callable[[optuna.Trial], Any], *, total: int, timeout: float | None,
    progress: bool, heartbeat: bool = False, grace_period: float = 60.0,
) -> None:
    """Run trials one at a time until the study holds ``total`` finished trials (all workers together).

    Each trial runs through ``study.optimize(n_trials=1)``, so RDB storages keep its heartbeat and
    fail the stale trials of killed workers; on a journal file, trials of dead processes on this
    host are failed here. A worker starts a trial only while finished + running trials are short
    of ``total``; if a race hands it one beyond that, the trial is pruned before any evaluation.
    """
    started = time.monotonic()
    bar = tqdm(total=total, initial=min(_count(study, TrialState.COMPLETE), total), desc="search", disable=not progress,
               file=sys.stdout)

    def guarded(trial: optuna.Trial) -> Any:
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        ahead = [t for t in study.get_trials(deepcopy=False, states=states) if t.number < trial.number]
        if len(ahead) >= total:
            raise optuna.TrialPruned("surplus trial: the study already holds enough")
        return objective(trial)

    try:
        while True:
            fail_orphaned_trials(study, heartbeat=heartbeat, grace_period=grace_period)
            done = _count(study, TrialState.COMPLETE)
            bar.update(min(done, total) - bar.n)
            if done >= total or (timeout is not None and time.monotonic() - started > timeout):
                break
            if done + _count(study, TrialState.RUNNING) >= total:
                time.sleep(1.0)  # other workers hold the remaining trials; wait for them to finish or fail
                continue
            study.optimize(guarded, n_trials=1, catch=(), gc_after_trial=False)
            bar.set_postfix(best=f"{best_accuracy(study):.2%}")
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
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is None:
            orphaned = (now - (trial.datetime_start or now)).total_seconds() > grace_period
        else:
            orphaned = not heartbeat and worker.get("host") == host and not _process_alive(int(worker.get("pid", -1)))
        if orphaned:
            try:
                study.tell(trial.number, state=TrialState.FAIL)
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


# -- reading results back -------------------------------------------------------------------------------
def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    """A finished trial's result (:class:`nas.study.candidates.CandidateResult` as a dict) with its number."""
    return {"trial": trial.number, **trial.user_attrs["result"]}


def finished_records(study: optuna.Study) -> list[dict[str, Any]]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def finished_result(study: optuna.Study, config: dict[str, Any]) -> dict[str, Any] | None:
    """The result a finished trial of any worker recorded for ``config`` (the study is the shared cache)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        result = trial.user_attrs.get("result")
        if result is not None and result["config"] == config:
            return result
    return None


def best_accuracy(study: optuna.Study) -> float:
    return max((r["accuracy"] for r in finished_records(study) if r["accuracy"] is not None), default=0.0)


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def redact(url: str) -> str:
    """A storage URL without its password, for output files."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
