"""The routing headroom benchmark's arithmetic (issue 22), by hand on four images: which images a share sent
wide takes, what that costs and scores, and when a point counts as paying."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_routing_headroom as headroom  # noqa: E402


def _route(correct: list[int], flops: float) -> SimpleNamespace:
    return SimpleNamespace(correct=torch.tensor(correct, dtype=torch.bool), flops=flops)


NARROW, WIDE = _route([1, 0, 1, 0], 10.0), _route([1, 1, 0, 0], 30.0)


def test_sweep_sends_the_lowest_signal_wide_first() -> None:
    signal = torch.tensor([0.9, 0.1, 0.5, 0.3])  # image 1, then 3, then 2, then 0 go wide
    points = {round(p["wide_share"], 2): p for p in headroom.sweep(signal, NARROW, WIDE, seed=0)}
    assert len(points) == 5 and len(headroom.sweep(signal, NARROW, WIDE, seed=0)) == headroom.STEPS + 1
    # share 0: every image narrow, 2 of 4 right; share 1: every image wide, 2 of 4 right
    assert points[0.0]["accuracy"] == pytest.approx(0.5) and points[0.0]["flops"] == pytest.approx(10.0)
    assert points[1.0]["accuracy"] == pytest.approx(0.5) and points[1.0]["flops"] == pytest.approx(30.0)
    # image 1 wide (right there), images 0, 2, 3 narrow (right, right, wrong): 3 of 4, at 0.75 * 10 + 0.25 * 30
    assert points[0.25]["accuracy"] == pytest.approx(0.75) and points[0.25]["flops"] == pytest.approx(15.0)
    # images 1 and 3 wide (right, wrong), 0 and 2 narrow (both right)
    assert points[0.5]["accuracy"] == pytest.approx(0.75)
    # image 2 also wide: it was right narrow and is wrong wide
    assert points[0.75]["accuracy"] == pytest.approx(0.5)
    # random routing would score 0.5 at every share (both routes score 0.5): the rest is what the signal knew
    assert [points[share]["over_mixing"] for share in (0.0, 0.25, 0.5, 0.75, 1.0)] == pytest.approx([0, 0.25, 0.25, 0, 0])


def test_sweep_breaks_ties_by_seed_not_by_index() -> None:
    flat = torch.zeros(400)
    narrow, wide = _route([1] * 200 + [0] * 200, 1.0), _route([0] * 200 + [1] * 200, 2.0)
    half = [p for p in headroom.sweep(flat, narrow, wide, seed=0) if p["wide_share"] == 0.5][0]
    # index order would send images 0-199 wide: every image wrong. A random half is right about half the time.
    assert 0.4 < half["accuracy"] < 0.6
    assert headroom.sweep(flat, narrow, wide, seed=0) == headroom.sweep(flat, narrow, wide, seed=0)


def test_judge_points_against_cheaper_statics_and_the_full_network() -> None:
    points = headroom.sweep(torch.tensor([0.9, 0.1, 0.5, 0.3]), NARROW, WIDE, seed=0)
    statics = [{"accuracy": 0.6, "flops": 14.0}, {"accuracy": 0.9, "flops": 16.0}]
    verdict = headroom.judge_points(points, statics, {"full_accuracy": 0.9, "full_flops": 30.0})
    # only the point at 15 FLOPs and above have a cheaper static; at 15 the best cheaper one is 0.6
    assert verdict["best_margin"]["margin"] == pytest.approx(0.15) and verdict["best_margin"]["flops"] == 15.0
    assert verdict["matches_full"] is None and verdict["passed"]
    # a static network within half a point of every point: no margin worth the name ...
    close = headroom.judge_points(points, [{"accuracy": 0.745, "flops": 14.0}], {"full_accuracy": 0.75, "full_flops": 30.0})
    assert close["best_margin"]["margin"] == pytest.approx(0.005) and not close["best_margin"]["margin"] >= headroom.BEATS_BY
    # ... but 0.75 is the full network's accuracy (within 0.3 point) at 15 / 30 = 50 % of its cost
    assert close["matches_full"]["cost_share"] == pytest.approx(0.5) and close["passed"]
