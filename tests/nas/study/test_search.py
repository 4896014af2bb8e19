"""``python -m nas.search`` on a tiny trained supernet: outputs, resume, budgets, seeds, bad input."""

from __future__ import annotations

import csv
import functools
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from nas.budget import format_flops
from nas.search import main
from nas.study.candidates import CandidateEvaluator
from nas.study.oracle import Oracle
from nas.study.pareto import dominates, objective_value
from nas.study.run import at_resolution, search
from search_spaces import SearchSpace, SubnetConfig
from supernet.io.checkpoint import load_supernet
from supernet.nn.flops import count_flops

CLI = [sys.executable, "-m", "nas.search"]
COMPLETE, FAIL = TrialState.COMPLETE, TrialState.FAIL


@dataclass(frozen=True)
class SpaceCosts:
    space: SearchSpace
    resolution: int
    smallest: float  # FLOPs of the min config at the trained resolution
    largest: float  # FLOPs of the max config
    flops: Callable[[SubnetConfig], float]


@pytest.fixture(scope="module")
def costs(tiny_checkpoint: Path) -> SpaceCosts:
    supernet, payload = load_supernet(tiny_checkpoint)
    resolution = int(payload["config"]["data"]["resolution"])

    @functools.cache
    def flops(cfg: SubnetConfig) -> float:
        return float(count_flops(supernet.extract(cfg).eval(), resolution))

    space = supernet.space
    return SpaceCosts(space, resolution, flops(space.min_config()), flops(space.max_config()), flops)


def load_trials(out_dir: Path, study_name: str) -> list[FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(out_dir / "study.journal")))
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)


def results_of(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    return [{"trial": t.number, **t.user_attrs["result"]} for t in trials if t.state == COMPLETE]


def point(r: dict[str, Any]) -> tuple[float, float]:
    """(what the search ranks by, cost): the oracle's score (oracle.score) and effective FLOPs."""
    return (objective_value(r), r["effective_flops"])


def assert_front_is_sound(front: list[dict[str, Any]], results: list[dict[str, Any]], budget: float) -> None:
    """Front members: feasible, evaluated, non-dominated among all feasible evaluated results, and the
    stored result of their trial; every other such result is dominated by a member or repeats its config."""
    candidates = [r for r in results if r["accuracy"] is not None and r["effective_flops"] <= budget]
    by_trial = {r["trial"]: r for r in results}
    assert front, "a front with no member although feasible trials were evaluated"
    for member in front:
        assert member["accuracy"] is not None and member["effective_flops"] <= budget
        assert member == by_trial[member["trial"]]
        assert not any(dominates(point(other), point(member)) for other in candidates)
    front_configs = {json.dumps(m["config"], sort_keys=True) for m in front}
    for r in candidates:
        assert (any(dominates(point(m), point(r)) for m in front)
                or json.dumps(r["config"], sort_keys=True) in front_configs), r["trial"]


def assert_evaluated_iff_within_budget(results: list[dict[str, Any]], budget: float) -> None:
    for r in results:
        assert r["violations"]["flops"] == pytest.approx(r["effective_flops"] - budget)
        assert (r["accuracy"] is not None) == (r["effective_flops"] <= budget), r
        if not r["config"]["gate_thresholds"]:
            assert r["effective_flops"] == r["flops"]  # gates off: the static count


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- the command line end to end -------------------------------------------------------------------
def test_cli_end_to_end(tiny_checkpoint: Path, costs: SpaceCosts, search_overrides: list[str], tmp_path: Path) -> None:
    budget = float(round((costs.smallest + costs.largest) / 2))
    out = tmp_path / "run"
    result = subprocess.run(
        [*CLI, "--checkpoint", str(tiny_checkpoint), "--budget", f"{budget:.0f}", "--trials", "6", "--out", str(out),
         "--no-progress", *search_overrides],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not result.stderr.strip()  # a budget that binds, no progress bar: nothing to warn about
    for name in ("pareto.json", "pareto.csv", "pareto.png", "best.json"):
        assert (out / name).is_file(), name
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["budgets"] == {"flops": budget} and pareto["trials"] == 6
    trials = load_trials(out, pareto["study"])
    assert [t.state for t in trials] == [COMPLETE] * 6
    results = results_of(trials)
    assert_evaluated_iff_within_budget(results, budget)
    for t, r in zip(trials, results):  # the objective values Optuna ranks by are the recorded ones
        assert t.values == [objective_value(r) if r["accuracy"] is not None else float("-inf"), r["effective_flops"]]
    assert_front_is_sound(pareto["front"], results, budget)

    with (out / "pareto.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [int(row["trial"]) for row in rows] == [m["trial"] for m in pareto["front"]]
    assert [float(row["effective_flops"]) for row in rows] == pytest.approx([m["effective_flops"] for m in pareto["front"]])

    best = json.loads((out / "best.json").read_text())
    feasible = [r for r in results if r["accuracy"] is not None and r["effective_flops"] <= budget]
    assert objective_value(best) == max(objective_value(r) for r in feasible)  # what the search ranks by: oracle.score
    assert best["config"] == next(r for r in results if r["trial"] == best["trial"])["config"]
    assert f"trial {best['trial']}" in result.stdout  # the table names the best trial


def test_help_states_the_flop_convention(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # undo line wrapping
    assert "one multiply-add = one flop" in text


# -- resume ---------------------------------------------------------------------------------------------
def test_resume_adds_only_the_missing_trials(tiny_checkpoint: Path, make_request: Callable[..., Any],
                                             tmp_path: Path) -> None:
    out = tmp_path / "study"
    first = search(make_request(tiny_checkpoint, out, trials=4, study_name="resume"))
    assert len(first.records) == 4
    before = [(t.number, t.params, t.values, t.user_attrs) for t in load_trials(out, "resume")]
    assert [number for number, *_ in before] == [0, 1, 2, 3]

    second = search(make_request(tiny_checkpoint, out, trials=7, study_name="resume"))
    trials = load_trials(out, "resume")
    assert [t.number for t in trials] == list(range(7))
    assert all(t.state == COMPLETE for t in trials)
    assert [(t.number, t.params, t.values, t.user_attrs) for t in trials[:4]] == before
    assert len(second.records) == 7
    # the resumed run goes on searching: it does not propose again what the first run already tried
    for t in trials[4:]:
        assert all(t.params != earlier.params for earlier in trials[: t.number]), t.number

    again = search(make_request(tiny_checkpoint, out, trials=7, study_name="resume"))
    assert len(load_trials(out, "resume")) == 7
    assert [r["trial"] for r in again.records] == list(range(7))


def test_interrupted_search_resumes(tiny_checkpoint: Path, make_request: Callable[..., Any], costs: SpaceCosts,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "study"
    request = make_request(tiny_checkpoint, out, budget="3MFLOPs", trials=4, study_name="crash")
    evaluated = 0
    original = CandidateEvaluator.evaluate

    def interrupted_on_third(self: CandidateEvaluator, cfg: SubnetConfig) -> Any:
        nonlocal evaluated
        evaluated += 1
        if evaluated == 3:
            raise KeyboardInterrupt
        return original(self, cfg)

    monkeypatch.setattr(CandidateEvaluator, "evaluate", interrupted_on_third)
    with pytest.raises(KeyboardInterrupt):
        search(request)
    assert [t.state for t in load_trials(out, "crash")] == [COMPLETE, COMPLETE, FAIL]

    monkeypatch.setattr(CandidateEvaluator, "evaluate", original)
    summary = search(request)
    trials = load_trials(out, "crash")
    complete = [t for t in trials if t.state == COMPLETE]
    assert len(complete) == 4 and len(summary.records) == 4
    assert [t.number for t in trials] == list(range(len(trials)))
    assert trials[2].state == FAIL and all(t.state == COMPLETE for t in trials if t.number != 2)
    # the seed whose evaluation was interrupted (the widest uniform config under the budget) is still tried
    configs = [SubnetConfig.from_dict(t.user_attrs["result"]["config"]) for t in complete]
    for seed in (costs.space.max_config(), costs.space.min_config(), widest_uniform_under(costs, 3e6)):
        assert at_resolution(seed, costs.resolution) in configs  # configs carry the evaluation resolution


# -- budgets and seeds ----------------------------------------------------------------------------------
def widest_uniform_under(costs: SpaceCosts, budget: float) -> SubnetConfig:
    uniform = {costs.space.uniform_config(k / 8) for k in range(2, 9)}
    return max((cfg for cfg in uniform if costs.flops(cfg) <= budget), key=costs.flops)


@pytest.fixture(scope="module")
def recorded_search(tiny_checkpoint: Path, make_request: Callable[..., Any],
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An 8-trial search at 3 MFLOPs (the max config is over it) recording what reached the oracle."""
    calls: dict[str, list[SubnetConfig]] = {"accuracy": [], "recalibrate": []}
    accuracy, recalibrate = Oracle.accuracy, Oracle.recalibrate

    def recording_accuracy(self: Oracle, cfg: SubnetConfig, network: Any = None) -> float:
        calls["accuracy"].append(cfg)
        return accuracy(self, cfg, network)

    def recording_recalibrate(self: Oracle, network: Any) -> Any:
        calls["recalibrate"].append(network.source_config)
        return recalibrate(self, network)

    out = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Oracle, "accuracy", recording_accuracy)
        patch.setattr(Oracle, "recalibrate", recording_recalibrate)
        summary = search(make_request(tiny_checkpoint, out, budget="3MFLOPs", trials=8, study_name="recorded"))
    return {"summary": summary, "calls": calls, "trials": load_trials(out, "recorded"), "budget": 3e6}


def test_over_budget_candidates_never_reach_the_oracle(recorded_search: dict[str, Any], costs: SpaceCosts) -> None:
    budget, calls = recorded_search["budget"], recorded_search["calls"]
    assert costs.largest > budget
    results = results_of(recorded_search["trials"])
    assert len(results) == 8
    assert_evaluated_iff_within_budget(results, budget)
    over = [r for r in results if r["violations"]["flops"] > 0]
    assert any(not r["config"]["gate_thresholds"] for r in over), "no gates-off trial was over the budget"
    for r in over:
        cfg = SubnetConfig.from_dict(r["config"])
        assert r["accuracy"] is None
        assert cfg not in calls["accuracy"], r["trial"]
        if not cfg.gated:  # a gated one needs recalibrated gates to know its effective FLOPs; a static one does not
            assert cfg not in calls["recalibrate"], r["trial"]
    for r in results:
        if r["violations"]["flops"] <= 0:
            assert SubnetConfig.from_dict(r["config"]) in calls["accuracy"]
    assert len(calls["accuracy"]) == len(set(calls["accuracy"]))  # each config scored once
    assert_front_is_sound(recorded_search["summary"].front, results, budget)


def test_seed_trials_come_first(recorded_search: dict[str, Any], costs: SpaceCosts) -> None:
    first = [SubnetConfig.from_dict(t.user_attrs["result"]["config"]) for t in recorded_search["trials"][:3]]
    uniform = widest_uniform_under(costs, recorded_search["budget"])
    assert costs.smallest < costs.flops(uniform) <= recorded_search["budget"] < costs.largest  # three distinct seeds
    expected = [costs.space.max_config(), costs.space.min_config(), uniform]
    assert first == [at_resolution(cfg, costs.resolution) for cfg in expected]


def test_budget_that_does_not_bind_warns(tiny_checkpoint: Path, search_overrides: list[str], tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["--checkpoint", str(tiny_checkpoint), "--budget", "1GFLOP", "--trials", "1", "--out",
                 str(tmp_path / "run"), "--no-progress", *search_overrides])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "does not bind" in warnings[0]


# -- bad input ------------------------------------------------------------------------------------------
BAD_INPUTS = {
    "unknown unit": (["--budget", "3parsecs"], "parsecs"),
    "zero budget": (["--budget", "0"], "'0'"),
    "negative budget": (["--budget=-5MFLOPs"], "-5MFLOPs"),
    "negative bare budget": (["--budget", "-5"], "'-5'"),
    "below the smallest sub-network": (["--budget", "1000"], "{smallest}"),
    "missing checkpoint": (["--budget", "3MFLOPs", "--checkpoint", "{missing}"], "{missing}"),
    "unknown override": (["--budget", "3MFLOPs", "oracle.nonsense=1"], "nonsense"),
}


def bad_arguments(case: str, checkpoint: Path, tmp_path: Path, search_overrides: list[str]) -> list[str]:
    arguments, _ = BAD_INPUTS[case]
    missing = str(tmp_path / "missing" / "checkpoint.pt")
    arguments = [a.format(missing=missing) for a in arguments]
    if "--checkpoint" not in arguments:
        arguments = ["--checkpoint", str(checkpoint), *arguments]
    return [*arguments, "--trials", "2", "--out", str(tmp_path / "run"), "--no-progress", *search_overrides]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line(case: str, tiny_checkpoint: Path, costs: SpaceCosts, search_overrides: list[str],
                                     tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(bad_arguments(case, tiny_checkpoint, tmp_path, search_overrides))
    captured = capfd.readouterr()
    assert code != 0
    line = one_error_line(captured.err)
    expected = BAD_INPUTS[case][1].format(smallest=format_flops(costs.smallest),
                                          missing=tmp_path / "missing" / "checkpoint.pt")
    assert expected in line
    assert not (tmp_path / "run").exists()  # a refused run leaves nothing behind


def test_bad_input_through_the_real_command(tiny_checkpoint: Path, search_overrides: list[str], tmp_path: Path) -> None:
    # the bad override sits between options: it must be reported as unknown, not as an unrecognized argument
    arguments = bad_arguments("unknown override", tiny_checkpoint, tmp_path, search_overrides)
    assert arguments.index("oracle.nonsense=1") < arguments.index("--trials")
    result = subprocess.run([*CLI, *arguments], check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert "nonsense" in line and "unrecognized" not in line
    assert not (tmp_path / "run").exists()


def test_study_identity_guard(tiny_checkpoint: Path, make_request: Callable[..., Any], search_overrides: list[str],
                              tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    search(make_request(tiny_checkpoint, out, budget="3MFLOPs", trials=1, study_name="guarded"))
    before = [(t.number, t.state, t.params) for t in load_trials(out, "guarded")]
    capfd.readouterr()
    code = main(["--checkpoint", str(tiny_checkpoint), "--budget", "4MFLOPs", "--trials", "2", "--study-name", "guarded",
                 "--out", str(out), "--no-progress", *search_overrides])
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and line.startswith("error: budgets.flops: study 'guarded' was scored with 3000000.0") and "4000000.0" in line
    assert [(t.number, t.state, t.params) for t in load_trials(out, "guarded")] == before  # the refused run added nothing


@pytest.mark.parametrize("override", ["oracle.bank_size=150", "oracle.k=5", "data.holdout_size=150",
                                      "effective_flops_images=32"])
def test_a_study_is_not_resumed_with_other_scoring_settings(override: str, tiny_checkpoint: Path,
                                                            make_request: Callable[..., Any], search_overrides: list[str],
                                                            tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    search(make_request(tiny_checkpoint, out, budget="3MFLOPs", trials=1, study_name="scored"))
    before = [(t.number, t.state, t.params) for t in load_trials(out, "scored")]
    capfd.readouterr()
    code = main(["--checkpoint", str(tiny_checkpoint), "--budget", "3MFLOPs", "--trials", "2", "--study-name", "scored",
                 "--out", str(out), "--no-progress", *search_overrides, override])
    line = one_error_line(capfd.readouterr().err)
    assert code == 2 and line.startswith(f"error: {override.split('=')[0]}: study 'scored' was scored with "), line
    assert [(t.number, t.state, t.params) for t in load_trials(out, "scored")] == before


# -- other samplers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_other_samplers_run_end_to_end(sampler: str, tiny_checkpoint: Path, make_request: Callable[..., Any],
                                       costs: SpaceCosts, tmp_path: Path) -> None:
    budget = 3e6
    summary = search(make_request(tiny_checkpoint, tmp_path, budget="3MFLOPs", trials=4, sampler=sampler,
                                  study_name=sampler))
    trials = load_trials(tmp_path, sampler)
    assert [t.state for t in trials] == [COMPLETE] * 4
    results = results_of(trials)
    assert_evaluated_iff_within_budget(results, budget)
    assert_front_is_sound(summary.front, results, budget)
    for r in results:
        costs.space.validate(SubnetConfig.from_dict(r["config"]))
    assert (tmp_path / "pareto.json").is_file() and (tmp_path / "best.json").is_file()
    assert json.loads((tmp_path / "pareto.json").read_text())["sampler"] == sampler


# -- latency at batch 1 and at latency.batch_size ---------------------------------------------------
def test_scored_candidates_record_latency_at_batch_1_and_at_the_batch_size(tiny_checkpoint, make_request, tmp_path):
    request = make_request(tiny_checkpoint, tmp_path / "run", budget=None, trials=10,
                           overrides=("latency.batch_size=4", "latency.warmup=1", "latency.repeats=3"))
    summary = search(request)
    scored = [r for r in summary.records if r["accuracy"] is not None]
    gated = [r for r in scored if r["config"]["gate_thresholds"]]
    assert scored and gated, "seed 0 should score configs with and without gates"
    for r in scored:
        by_batch = r["latency_by_batch"]
        assert set(by_batch) == {"1", "4"} and by_batch["4"] == r["latency"]
        assert {size: entry["batch_size"] for size, entry in by_batch.items()} == {"1": 1, "4": 4}
        if r["config"]["gate_thresholds"]:
            assert {k: v["batch_size"] for k, v in r["static_latency_by_batch"].items()} == {"1": 1, "4": 4}
        else:
            assert r["static_latency_by_batch"] is None
    front_gated = [r for r in summary.front if r["config"]["gate_thresholds"]]
    notes = json.loads((summary.out_dir / "pareto.json").read_text())["gate_latency_notes"]
    assert len(notes) == len(front_gated)
    rows = list(csv.DictReader((summary.out_dir / "pareto.csv").open()))
    assert all(float(row["latency_batch1_s"]) > 0 for row in rows)


def test_gate_speed_note_calls_out_a_batch_where_gates_save_nothing():
    from nas.study.pareto import gate_speed_note

    def timing(seconds: float, batch: int) -> dict[str, Any]:
        return {"seconds": seconds, "batch_size": batch}

    record = {"trial": 3, "latency_by_batch": {"1": timing(0.4e-3, 1), "8": timing(2.2e-3, 8)},
              "static_latency_by_batch": {"1": timing(0.5e-3, 1), "8": timing(2.0e-3, 8)}}
    note = gate_speed_note(record)
    assert note.startswith("trial 3, gates on: batch 1 (eager, gathered) 0.400 ms vs 0.500 ms without gates (0.80x)")
    assert "batch 8 (eager, masked) 2.200 ms vs 2.000 ms" in note and "no faster than static width at batch 8" in note
    record["latency_by_batch"]["8"] = timing(1.9e-3, 8)
    assert "no faster" not in gate_speed_note(record)
    assert gate_speed_note({"trial": 1, "latency_by_batch": {"1": timing(1e-3, 1)}, "static_latency_by_batch": None}) is None


# -- latency as deployed (issue 18) ------------------------------------------------------------------------
def test_a_latency_search_has_a_front_at_each_batch_and_records_how_it_timed(tiny_checkpoint, make_request, tmp_path):
    request = make_request(tiny_checkpoint, tmp_path / "run", budget="1s", trials=6, study_name="served",
                           overrides=("latency.batch_size=4",))
    summary = search(request)
    scored = [r for r in summary.records if r["accuracy"] is not None]
    for r in scored:
        for size, latency in r["latency_by_batch"].items():
            assert (latency["runtime"], latency["dtype"], latency["batch_size"]) == ("eager", "float32", int(size))
            assert latency["device"].startswith("cpu ") and {"torch", "python"} <= set(latency["versions"])
            expected_mode = None if not r["config"]["gate_thresholds"] else ("gathered" if size == "1" else "masked")
            assert latency["gate_mode"] == expected_mode
    pareto = json.loads((summary.out_dir / "pareto.json").read_text())
    assert pareto["latency_batch_sizes"] == [1, 4] and set(pareto["fronts_by_batch"]) == {"1", "4"}
    for size, members in pareto["fronts_by_batch"].items():  # each batch's front is non-dominated at that batch
        points = {r["trial"]: (objective_value(r), r["latency_by_batch"][size]["seconds"]) for r in scored}
        assert {m["trial"] for m in members} <= set(points)
        for m in members:
            assert not any(dominates(points[t], points[m["trial"]]) for t in points)
    assert [m["trial"] for m in pareto["fronts_by_batch"]["4"]] == [r["trial"] for r in summary.front]
    rows = {int(row["trial"]): row for row in csv.DictReader((summary.out_dir / "pareto.csv").open())}
    for size, members in pareto["fronts_by_batch"].items():
        assert all(size in rows[m["trial"]]["on_front_at_batch"].split() for m in members)
    identity = optuna.load_study(study_name="served", storage=JournalStorage(JournalFileBackend(
        str(summary.out_dir / "study.journal")))).user_attrs["identity"]
    assert (identity["latency.runtime"], identity["latency.dtype"], identity["latency.batch_size"]) == ("eager", "float32", 4)
    assert identity["device"].startswith("cpu ") and identity["latency.versions.torch"]


def test_a_study_timed_on_one_runtime_is_not_resumed_on_another(tiny_checkpoint: Path, make_request: Callable[..., Any],
                                                                search_overrides: list[str], tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "study"
    search(make_request(tiny_checkpoint, out, budget="1s", trials=1, study_name="timed"))
    capfd.readouterr()
    code = main(["--checkpoint", str(tiny_checkpoint), "--latency-budget", "1s", "--trials", "2", "--study-name", "timed",
                 "--out", str(out), "--no-progress", *search_overrides, "latency.runtime=onnxruntime"])
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]  # past the budget warning
    assert code == 2 and len(errors) == 1 and errors[0].startswith(
        "error: latency.runtime: study 'timed' was scored with 'eager', this run asks for 'onnxruntime'"), errors
