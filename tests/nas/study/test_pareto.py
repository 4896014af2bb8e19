"""Pareto front and best record of search records: non-domination, feasibility, duplicates, brute force."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

from nas.study.pareto import best_record, dominates, pareto_front


def record(trial: int, accuracy: float | None, flops: float, *, violation: float | None = None,
           config: int | None = None, latency: float | None = None) -> dict[str, Any]:
    """A search record as nas.search writes them; ``config`` defaults to one of its own (the trial number)."""
    return {
        "trial": trial,
        "config": {"space": "tiny", "channels": {"conv1": 8 + (trial if config is None else config)},
                   "gate_thresholds": None, "resolution": 16},
        "flops": int(flops), "effective_flops": float(flops), "params": 1000,
        "latency": None if latency is None else {"seconds": latency, "device": "cpu", "batch_size": 1},
        "accuracy": accuracy,
        "violations": {} if violation is None else {"flops": violation},
    }


def feasible_evaluated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["accuracy"] is not None and all(v <= 0 for v in r["violations"].values())]


def point(r: dict[str, Any], objective: str = "flops") -> tuple[float, float]:
    cost = r["latency"]["seconds"] if objective == "latency" else r["effective_flops"]
    return (r["accuracy"], cost)


def config_key(r: dict[str, Any]) -> str:
    return json.dumps(r["config"], sort_keys=True)


HAND_MADE = [
    record(0, 0.50, 100, violation=-50),
    record(1, 0.60, 200, violation=-10),
    record(2, 0.55, 250, violation=-5),  # dominated by trial 1 (less accurate, dearer)
    record(3, 0.60, 150, violation=-20),  # dominates trial 1 (as accurate, cheaper)
    record(4, 0.90, 400, violation=+100),  # most accurate but over budget: never on the front
    record(5, None, 500, violation=+200),  # over budget, never evaluated
    record(6, None, 120),  # no budget stated, not evaluated
    record(7, 0.70, 240, violation=-1),
    record(8, 0.70, 240, violation=-1, config=7),  # the same config found again
    record(9, 0.40, 100, violation=-50),  # as cheap as trial 0, less accurate
    record(10, 0.99, 90, violation=+0.5),  # infeasible by a hair
    record(11, 0.70, 250, violation=0.0),  # exactly at the budget is feasible; dominated by trial 7
]


def test_dominates_is_strict_in_one_objective() -> None:
    assert dominates((0.6, 100), (0.5, 100))
    assert dominates((0.5, 90), (0.5, 100))
    assert dominates((0.6, 90), (0.5, 100))
    assert not dominates((0.5, 100), (0.5, 100))  # equal points do not dominate each other
    assert not dominates((0.6, 110), (0.5, 100))  # a trade-off
    assert not dominates((0.5, 100), (0.6, 90))


def test_hand_made_front() -> None:
    front = pareto_front(HAND_MADE, "flops")
    assert [r["trial"] for r in front] == [0, 3, 7]  # trial 8 is trial 7's config again: counted once
    candidates = feasible_evaluated(HAND_MADE)
    for member in front:
        assert member["accuracy"] is not None and all(v <= 0 for v in member["violations"].values())
        assert not any(dominates(point(other), point(member)) for other in candidates)
    on_front = {r["trial"] for r in front}
    front_configs = {config_key(r): r for r in front}
    for r in candidates:
        if r["trial"] in on_front:
            continue
        dominated = any(dominates(point(m), point(r)) for m in front)
        duplicate = config_key(r) in front_configs and point(front_configs[config_key(r)]) == point(r)
        assert dominated or duplicate, r["trial"]


def test_best_is_most_accurate_feasible_record() -> None:
    best = best_record(HAND_MADE, "flops")
    assert best is not None and best["trial"] == 7  # trials 4 and 10 are more accurate but over budget
    # a tie in accuracy goes to the cheaper record
    tied = [record(0, 0.8, 300, violation=-1), record(1, 0.8, 200, violation=-1), record(2, 0.3, 100, violation=-1)]
    assert best_record(tied, "flops")["trial"] == 1
    assert best_record([record(0, None, 10), record(1, 0.9, 10, violation=1.0)], "flops") is None
    assert best_record([], "flops") is None
    assert pareto_front([record(0, None, 10), record(1, 0.9, 10, violation=1.0)], "flops") == []


def test_latency_objective_uses_measured_seconds() -> None:
    # Cheaper in FLOPs is dearer in latency here: the front must follow latency.
    records = [record(0, 0.5, 100, latency=2e-3), record(1, 0.6, 200, latency=1e-3), record(2, 0.7, 300, latency=3e-3)]
    assert [r["trial"] for r in pareto_front(records, "latency")] == [1, 2]
    assert [r["trial"] for r in pareto_front(records, "flops")] == [0, 1, 2]


def brute_force_front(records: list[dict[str, Any]]) -> list[int]:
    """Trial numbers of the front by the definition: feasible, evaluated, no candidate strictly better in one
    objective and no worse in the other; one per config (its first trial); by ascending cost."""
    candidates = feasible_evaluated(records)
    if not candidates:
        return []
    accuracy = np.array([r["accuracy"] for r in candidates])
    cost = np.array([r["effective_flops"] for r in candidates])
    no_worse = (accuracy[:, None] >= accuracy[None, :]) & (cost[:, None] <= cost[None, :])
    better = (accuracy[:, None] > accuracy[None, :]) | (cost[:, None] < cost[None, :])
    dominated = (no_worse & better).any(axis=0)  # column j is dominated by some row i
    kept: dict[str, dict[str, Any]] = {}
    for r, is_dominated in zip(candidates, dominated):
        if not is_dominated and (config_key(r) not in kept or r["trial"] < kept[config_key(r)]["trial"]):
            kept[config_key(r)] = r
    return [r["trial"] for r in sorted(kept.values(), key=lambda r: (r["effective_flops"], r["trial"]))]


@pytest.mark.parametrize("seed", range(40))
def test_front_matches_brute_force_on_random_clouds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    budget = 80.0
    records: list[dict[str, Any]] = []
    for trial in range(n):
        if records and rng.random() < 0.15:  # the same config found again: same measurements, new trial
            twin = records[int(rng.integers(len(records)))]
            records.append({**twin, "trial": trial})
            continue
        # coarse grids so that equal accuracies and equal costs happen
        flops = float(rng.integers(1, 21) * 5)
        over = flops > budget
        evaluated = not over and rng.random() > 0.1
        accuracy = float(rng.integers(0, 30) / 30) if evaluated else None
        if over and rng.random() < 0.3:  # an infeasible record that nonetheless carries an accuracy
            accuracy = float(rng.integers(0, 30) / 30)
        records.append(record(trial, accuracy, flops, violation=flops - budget))
    order = rng.permutation(n)
    shuffled = [records[i] for i in order]

    front = pareto_front(shuffled, "flops")
    assert [r["trial"] for r in front] == brute_force_front(records)

    candidates = feasible_evaluated(records)
    for member in front:
        assert member["accuracy"] is not None and member["effective_flops"] <= budget
        assert not any(dominates(point(other), point(member)) for other in candidates)
    # along the front, cost up means accuracy strictly up (else the dearer one would be dominated)
    for cheaper, dearer in itertools.pairwise(front):
        assert cheaper["effective_flops"] <= dearer["effective_flops"]
        assert dearer["accuracy"] > cheaper["accuracy"] or point(dearer) == point(cheaper)
    front_configs = {config_key(r) for r in front}
    for r in candidates:
        if r not in front:
            assert any(dominates(point(m), point(r)) for m in front) or config_key(r) in front_configs

    best = best_record(shuffled, "flops")
    if candidates:
        top = max(r["accuracy"] for r in candidates)
        assert best is not None and best["accuracy"] == top
        assert best["effective_flops"] == min(r["effective_flops"] for r in candidates if r["accuracy"] == top)
        assert config_key(best) in front_configs  # the most accurate feasible record is on the front
    else:
        assert best is None and front == []


# -- pareto.png's cost axis ------------------------------------------------------------------------
def test_cost_axis_follows_the_data_and_names_a_budget_outside_it():
    from nas.study.pareto import cost_axis

    axis = cost_axis([2.4, 12.0, 34.75], 1000.0, budget_text="1.00 GFLOPs")  # the default run's shape
    assert not axis.log  # 14.5 x span
    assert axis.limits[0] < 2.4 and 34.75 < axis.limits[1] < 40
    assert not axis.budget_shown and axis.note == "budget 1.00 GFLOPs lies above every point"


def test_cost_axis_draws_a_budget_inside_and_goes_log_past_30x():
    from nas.study.pareto import LOG_SPAN, cost_axis

    inside = cost_axis([10.0, 20.0, 40.0], 30.0)
    assert inside.budget_shown and inside.note is None and not inside.log
    wide = cost_axis([1.0, 1.0 * LOG_SPAN * 1.01], None)
    assert wide.log and wide.limits[0] < 1.0 and wide.limits[1] > LOG_SPAN
    assert not cost_axis([1.0, LOG_SPAN * 0.99], None).log
    below = cost_axis([10.0, 20.0], 1.0)
    assert below.note is not None and "below" in below.note


def test_plot_uses_the_axis(tmp_path):
    from nas.study.pareto import _plot

    records = [record(0, 0.5, 2.4e6), record(1, 0.6, 34.75e6), record(2, None, 2e9, violation=1e9)]
    axis = _plot(tmp_path / "p.png", records, [records[0], records[1]], objective="flops",
                 budgets={"flops": 1e9}, title="t")
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert axis.log and axis.limits[1] > 2000  # the over-budget point is data too, so the span passes 30 x
    assert axis.budget_shown  # and the budget lies between the points


def test_plot_latency_axis_in_milliseconds(tmp_path):
    from nas.study.pareto import _plot

    records = [record(0, 0.5, 1e6, latency=0.0008), record(1, 0.6, 2e6, latency=0.0016)]
    axis = _plot(tmp_path / "p.png", records, records, objective="latency", budgets={"latency": 0.5}, title="t")
    assert not axis.log and axis.limits[1] < 2.0 and axis.note is not None  # 500 ms budget named, not drawn


def timed(trial: int, accuracy: float, at_1: float, at_256: float) -> dict[str, Any]:
    """A scored record timed at batch 1 and 256 (the objective's)."""
    r = record(trial, accuracy, 1e6 * (trial + 1))
    r["latency_by_batch"] = {"1": {"seconds": at_1, "batch_size": 1, "device": "cuda:0 X"},
                             "256": {"seconds": at_256, "batch_size": 256, "device": "cuda:0 X"}}
    r["latency"] = r["latency_by_batch"]["256"]
    return r


def test_a_latency_objective_has_a_front_at_each_batch(tmp_path) -> None:
    """At batch 1 a big GPU is flat in FLOPs, at 256 latency follows the work: the fronts differ, both are written."""
    from nas.study.pareto import fronts_by_batch, write_outputs

    records = [timed(0, 0.50, 1.0e-3, 2e-3), timed(1, 0.60, 1.1e-3, 4e-3), timed(2, 0.70, 0.9e-3, 8e-3),
               timed(3, 0.65, 1.2e-3, 9e-3)]
    fronts = fronts_by_batch(records, "latency")
    assert [r["trial"] for r in fronts["256"]] == [0, 1, 2] and [r["trial"] for r in fronts["1"]] == [2]
    assert fronts_by_batch(records, "flops") == {}
    front, _ = write_outputs(tmp_path, records, objective="latency", budgets={}, meta={"study": "s"})
    assert [r["trial"] for r in front] == [0, 1, 2]  # the objective's batch
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert pareto["latency_batch_sizes"] == [1, 256]
    assert {size: [m["trial"] for m in members] for size, members in pareto["fronts_by_batch"].items()} == {
        "1": [2], "256": [0, 1, 2]}
    rows = (tmp_path / "pareto.csv").read_text().splitlines()
    assert rows[0].split(",")[14] == "on_front_at_batch"
    assert [row.split(",")[14] for row in rows[1:]] == ["256", "256", "1 256"]
    width = int.from_bytes((tmp_path / "pareto.png").read_bytes()[16:20], "big")  # PNG header: two panels side by side
    assert width >= 2 * 7 * 120 - 10
