"""Issue 18.2: the smallest sub-network measured slower than the full one.

On an H200 the budget check timed the smallest network first in the process (eager, fp32, batch 1,
5 warm-up forwards: a few milliseconds) and got 3.09 ms against 1.93 ms for the full network timed
later. What differs between that measurement and a candidate's is only the machine's state: nothing
had run on the device yet, so whatever a machine does when work starts after idle (GPU clocks ramping
up, kernels loaded lazily, caches filling) fell on the first network's warm-up and timed forwards.
A count of warm-up forwards says nothing about how long the machine has been busy.

The GPU itself cannot be run here, so these tests simulate such a machine exactly (a clock that
advances by each forward's cost, plus a penalty during its first 100 ms of work) and pin that
(1) the old procedure reproduces the inversion on it, (2) a warm-up measured in time removes it,
(3) timing the two networks interleaved removes it, and (4) the search's budget check measures
the smallest and the full network side by side, with the search's time-based warm-up, so their
order comes out right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nas.latency.measure as measure
from nas.latency.measure import measure_latencies, measure_latency
from nas.settings import load_search_settings
from nas.study.candidates import CandidateEvaluator
from nas.study.run import check_budgets

SMALL, LARGE = 0.5e-3, 1.5e-3  # seconds per forward once the machine is warm
COLD_SECONDS, COLD_PENALTY = 0.1, 3e-3  # the first 100 ms of work cost 3 ms more per forward


class ColdMachine:
    """A simulated machine: its clock advances by the work done; during its first ``COLD_SECONDS`` of work
    every forward costs ``COLD_PENALTY`` more."""

    def __init__(self) -> None:
        self.now, self.started = 0.0, None
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now

    def work(self, name: str, seconds: float) -> None:
        if self.started is None:
            self.started = self.now
        cold = self.now - self.started < COLD_SECONDS
        self.now += seconds + (COLD_PENALTY if cold else 0.0)
        self.log.append(name)


class Simulated(nn.Module):
    """A network that costs ``seconds`` of the machine's time per forward."""

    def __init__(self, machine: ColdMachine, name: str, seconds: float) -> None:
        super().__init__()
        self.machine, self.name, self.seconds = machine, name, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.machine.work(self.name, self.seconds)
        return x


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> ColdMachine:
    simulated = ColdMachine()
    monkeypatch.setattr(measure, "clock", simulated.clock)
    return simulated


def test_the_old_procedure_reproduces_the_inversion(machine: ColdMachine) -> None:
    """Smallest first, 5 warm-up forwards, then the full network: the smallest measures slower."""
    x = torch.zeros(1, 3, 8, 8)
    smallest = measure_latency(Simulated(machine, "small", SMALL), x, warmup=5, repeats=20)
    full = measure_latency(Simulated(machine, "large", LARGE), x, warmup=5, repeats=20)
    assert smallest.seconds == pytest.approx(SMALL + COLD_PENALTY) and full.seconds == pytest.approx(LARGE)
    assert smallest.seconds > full.seconds  # the ordering, on the simulated machine


def test_a_warm_up_measured_in_time_removes_it(machine: ColdMachine) -> None:
    x = torch.zeros(1, 3, 8, 8)
    smallest = measure_latency(Simulated(machine, "small", SMALL), x, warmup=5, repeats=20, warmup_seconds=0.2)
    full = measure_latency(Simulated(machine, "large", LARGE), x, warmup=5, repeats=20, warmup_seconds=0.2)
    assert smallest.warmup > 5  # it warmed up until 200 ms had passed
    assert (smallest.seconds, full.seconds) == (pytest.approx(SMALL), pytest.approx(LARGE))


def test_timing_interleaved_removes_it(machine: ColdMachine) -> None:
    x = torch.zeros(1, 3, 8, 8)
    smallest, full = measure_latencies([Simulated(machine, "small", SMALL), Simulated(machine, "large", LARGE)], x,
                                       warmup=5, repeats=20)
    assert smallest.seconds < full.seconds
    timed = machine.log[10:]  # after each network's 5 warm-up forwards: one of each per round, order rotating
    assert timed[:4] == ["small", "large", "large", "small"] and timed.count("small") == timed.count("large") == 20


def test_the_budget_check_times_the_smallest_and_full_network_side_by_side(
        machine: ColdMachine, oracle_and_supernet: Any, make_request: Callable[..., Any], tiny_checkpoint: Path,
        search_overrides: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The regression: the search's own budget check, on the simulated machine, with the search's latency settings
    (warm-up of 5 forwards and 0.2 s): the smallest network measures faster than the full one, no note."""
    oracle, supernet = oracle_and_supernet
    space = supernet.space
    simulated = {space.min_config().key(): Simulated(machine, "small", SMALL),
                 space.max_config().key(): Simulated(machine, "large", LARGE)}
    monkeypatch.setattr(supernet, "extract", lambda cfg: simulated[cfg.key()])
    # unanchored: a reference network timed beside them would run on the real clock, not the simulated one
    settings = load_search_settings([*search_overrides, "latency.warmup=5", "latency.warmup_seconds=0.2",
                                     "latency.repeats=20", "latency.anchor=off"])
    evaluator = CandidateEvaluator(supernet, oracle, flops_budget=None, latency_budget=1e-3, latency=settings.latency)
    request = dataclasses.replace(make_request(tiny_checkpoint, tmp_path, budget="1ms"), settings=settings)
    smallest, largest = evaluator.config_latencies([space.min_config(), space.max_config()])
    assert (smallest, largest) == (pytest.approx(SMALL), pytest.approx(LARGE))
    assert check_budgets(request, evaluator) == {"latency": 1e-3}  # between the two: binds, and is not refused
    assert "slower than the full one" not in capsys.readouterr().err
    assert set(machine.log) == {"small", "large"}


def test_the_budget_check_says_so_when_the_order_is_still_inverted(oracle_and_supernet: Any, make_request: Callable[..., Any],
                                                                  tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Where a runtime's latency really does not follow the work (eager at batch 1 on a big GPU: launches), the
    check still orders the two for the budget, and says that it did."""
    oracle, supernet = oracle_and_supernet
    request = make_request(tiny_checkpoint, tmp_path, budget="2ms")
    evaluator = CandidateEvaluator(supernet, oracle, flops_budget=None, latency_budget=2e-3,
                                   latency=request.settings.latency)
    monkeypatch.setattr(evaluator, "config_latencies", lambda configs: [3e-3, 1e-3])
    assert check_budgets(request, evaluator) == {"latency": 2e-3}
    err = capsys.readouterr().err
    assert "note: the smallest sub-network measured slower than the full one (3.00 ms vs 1.00 ms, eager float32 at " \
           "batch 1)" in err

