"""The GPU session's scripts, on the CPU (issue 21): the time plan priced from a dry run's measured costs, check (b)
comparing like with like (and able to fail), (a)'s reference built with the run's heads, every stage owing a
verdict, and nothing big under ``--out``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_gpu  # noqa: E402
from gpu_session import plan as session  # noqa: E402

from supernet.train import load_train_settings  # noqa: E402
from supernet.training.sandwich import relative_size  # noqa: E402
from supernet.training.setup import build_run  # noqa: E402

MEASURED = BENCHMARKS / "gpu_session" / "measured_costs.json"


# -- the time plan --------------------------------------------------------------------------------------------
def test_the_recorded_dry_run_costs_plan_the_session_inside_8_minutes_with_a_fifth_to_spare() -> None:
    costs = session.HostCosts.from_dict(json.loads(MEASURED.read_text()))
    plan = session.plan_session(costs)
    assert plan.fits, plan.table()
    assert plan.planned_seconds <= 0.8 * 480 + 1e-6
    assert plan.train_seconds >= session.MIN_TRAIN_SECONDS
    assert all(row.seconds > 0 for row in plan.rows)
    setup = sum(row.seconds for row in plan.rows if row.command == "setup")
    # run.sh's timeouts (and the grace before SIGKILL) end the session in time, whatever happens
    assert setup + sum(plan.timeouts.values()) + 2 * session.KILL_GRACE_SECONDS <= 480
    assert all(plan.timeouts[c] >= sum(r.seconds for r in plan.rows if r.command == c) for c in session.COMMANDS)
    shell = dict(line.split("=", 1) for line in plan.shell().splitlines())
    assert float(shell["train_seconds"]) == pytest.approx(plan.train_seconds, abs=0.5)
    assert shell["latency_budgets"] == "'cold_start=8 flops_order=25 full_batch1=10 gated_batch1=20'"


def test_the_plan_follows_its_costs_and_refuses_what_does_not_fit() -> None:
    costs = session.HostCosts.from_dict(json.loads(MEASURED.read_text()))
    base = session.plan_session(costs)
    slower = session.plan_session(dataclasses.replace(costs, decode_per_image_s=costs.decode_per_image_s + 1e-4))
    decoded = 2 * session.TRAIN_IMAGES + session.VAL_IMAGES  # (0), (c)'s run, (c)'s held-out images
    assert base.train_seconds - slower.train_seconds == pytest.approx(decoded * 1e-4)
    assert base.planned_seconds == pytest.approx(slower.planned_seconds)  # training gives way, the total holds
    heavy = session.plan_session(dataclasses.replace(costs, python_start_s=60.0))
    assert not heavy.fits and heavy.train_seconds < session.MIN_TRAIN_SECONDS and "DOES NOT FIT" in heavy.table()
    loose = session.plan_session(costs, margin=0.1)
    assert loose.train_seconds == pytest.approx(base.train_seconds + 0.1 * 480)


def test_plan_reads_a_dry_runs_files_and_exits_1_when_it_does_not_fit(tmp_path: Path, capsys) -> None:
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"costs": {
        "python_start_s": 3.0, "files": 40_000, "images": 30_000, "walk_s": 0.2, "headers_s": 3.0, "store_s": 9.0,
        "checkpoint_read_bytes_per_s": 5e8, "measured_on": "test"}}))
    (tmp_path / "gpu_latency.json").write_text(json.dumps({"setup": {
        "flops_per_config_seconds": 0.4, "flops_pool_start_seconds": 6.0}}))
    (tmp_path / "session_costs.json").write_text(json.dumps({"tar_s": 4.0}))
    costs = session.costs_from_dry_run(tmp_path)
    assert costs.header_per_image_s == pytest.approx(1e-4) and costs.decode_per_image_s == pytest.approx(3e-4)
    assert costs.walk_per_file_s == pytest.approx(5e-6) and costs.tar_s == 4.0
    assert session.main(["--from-dry-run", str(tmp_path), "--write-costs", str(tmp_path / "costs.json")]) == 0
    assert "FITS" in capsys.readouterr().out
    assert session.HostCosts.from_dict(json.loads((tmp_path / "costs.json").read_text())) == costs
    (tmp_path / "slow.json").write_text(json.dumps({**dataclasses.asdict(costs), "decode_per_image_s": 0.01}))
    assert session.main(["--costs", str(tmp_path / "slow.json")]) == 1


def test_epochs_fit_the_training_time_with_views_and_checkpoints() -> None:
    assert bench_gpu.epochs_that_fit(100.0, steps_per_epoch=58, loop_step_s=0.08, checkpoint_s=0.6) == 19
    assert bench_gpu.epochs_that_fit(100.0, steps_per_epoch=58, loop_step_s=0.08, checkpoint_s=5.0) == 10
    assert bench_gpu.epochs_that_fit(1.0, steps_per_epoch=58, loop_step_s=0.08, checkpoint_s=0.6) == 1


# -- (a): the reference's heads are the run's -------------------------------------------------------------------
def test_the_reference_is_built_with_the_recipes_heads() -> None:
    cfg = load_train_settings(["recipe=gpu_10min"])
    student, predictor = bench_gpu.reference_networks(bench_gpu.HeadSizes.of(cfg.ssl))
    linears = lambda module: [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert linears(student[1]) == [(512, 1024), (1024, 256)]  # gpu_10min: 512 -> 1024 -> 256
    assert linears(predictor) == [(256, 1024), (1024, 256)]  # 256 -> 1024 -> 256
    us3l = load_train_settings(["recipe=us3l_byol_cifar"])
    student, _ = bench_gpu.reference_networks(bench_gpu.HeadSizes.of(us3l.ssl))
    assert len(linears(student[1])) == us3l.ssl.proj_layers and linears(student[1])[0] == (512, us3l.ssl.proj_hidden_dim)


# -- (b): like with like ----------------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("b")
    cfg = load_train_settings(["recipe=gpu_10min", "model=tiny", "data=mnist_embedded", "data.max_images=128",
                               "data.holdout_size=100", "data.resolution=16", "batch_size=32", "device=cpu",
                               "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=32", "ssl.proj_dim=16",
                               "ssl.pred_hidden_dim=32", f"out_dir={out}"])
    return build_run(cfg)


@pytest.mark.parametrize(("slowdown", "passes"), [(1.0, True), (1.5, False)], ids=["as_standalone", "slowed"])
def test_check_b_compares_like_with_like_and_fails_a_slowed_sandwich(tiny_run: Any, monkeypatch: pytest.MonkeyPatch,
                                                                      slowdown: float, passes: bool) -> None:
    """A step costs teacher + its networks (+ the gated pass) + EMA. A sandwich that costs what its networks cost
    alone scores 1.0 (the old sum, paying a teacher and an EMA per network, made it ~0.6 by construction); one
    1.5x slower fails the target."""
    clock, teacher, ema, gated = _Clock(), 2.0, 0.5, 1.5
    run = tiny_run

    def fake_step(run: Any, views: Any, plan: list[Any]) -> None:
        networks = sum(1.0 + 2.0 * relative_size(run.space, subnet) for _, subnet in plan)
        own = networks + (gated if run.gate_flops is not None else 0.0)
        clock.now += (teacher + ema + own) * (slowdown if len(plan) > 1 else 1.0)

    monkeypatch.setattr(bench_gpu, "train_step", fake_step)
    monkeypatch.setattr(run.method, "teacher_targets", lambda views, generator=None: clock.__setattr__("now", clock.now + teacher))
    monkeypatch.setattr(run.method, "update_teacher", lambda momentum: clock.__setattr__("now", clock.now + ema))
    result = bench_gpu.sandwich_ratio(run, [], rounds=3, deadline=bench_gpu.Deadline(1e9, clock), clock=clock)
    assert result["rounds"] == 3 and result["teacher_s"] == teacher and result["ema_s"] == ema
    assert result["ratio"] == pytest.approx(slowdown)
    report = bench_gpu.Report(machine={}, args={})
    report.check("sandwich", "(b) ratio", "(b) ratio", result["ratio"], bench_gpu.TARGETS["sandwich_ratio"], at_most=True)
    assert (report.failed() == []) == passes


# -- every stage owes a verdict; nothing big under --out -------------------------------------------------------------
def test_missing_rows_and_raised_stages_fail_even_in_a_dry_run() -> None:
    report = bench_gpu.Report(machine={}, args={}, dry_run=True)
    report.check("cifar_run", "(c) max", "(c) kNN at full width", 0.2, 0.8)  # a target: not judged in a dry run
    report.check("cifar_run", "(c) min", "(c) kNN at width 0.25", 0.2, 0.7)
    report.stages["cifar_run"] = {"knn": {}}
    report.stages["fidelity"] = {"error": "RuntimeError: no checkpoint from (c) to score"}
    assert report.failed() == []
    report.check("reference", "(a) ratio", "(a) ratio", 2.0, 0.8)  # reached its verdict, then raised
    report.stages["reference"] = {"error": "StopIteration: "}
    report.close(["reference", "cifar_run", "fidelity", "sandwich"], gated=True)
    failed = {check.key: check.line for check in report.failed()}
    assert set(failed) == {"(a) reference", "(c) gated", "(d) fidelity", "(d) tau", "(b) ratio"}
    assert "raised RuntimeError" in failed["(d) tau"] and "did not run" in failed["(b) ratio"]
    assert failed["(a) reference"] == "FAIL: (a) reference: raised StopIteration: "
    assert [line.split(": ")[1].split()[0] for line in report.verdicts(["cifar_run", "fidelity"])] == ["FAIL", "FAIL"]


def _cifar_like(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"class{label}" / f"{index}.jpg")
    return root


def test_a_stage_that_raises_fails_the_command_and_only_json_reaches_out(tmp_path: Path, monkeypatch) -> None:
    """(d) without (c) has no checkpoint to score: it raises, owes its verdict, and the exit code says so. The work
    folder (checkpoints, probes) lived under the temporary folder and is gone; --out holds bench_gpu.json only."""
    monkeypatch.setattr(bench_gpu.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    code = bench_gpu.main(["--data-root", str(_cifar_like(tmp_path / "data")), "--holdout", "4", "--out", str(out),
                           "--stages", "fidelity", "--dry-run", "--probe-megabytes", "1", "--workers", "0"])
    assert code == 1
    report = json.loads((out / "bench_gpu.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["bench_gpu.json"] and list((tmp_path / "tmp").iterdir()) == []
    lines = [check["line"] for check in report["checks"]]
    assert lines[0].startswith("RAN: (0) measured: 16 files listed") and report["costs"]["images"] == 12
    assert lines[-2:] == ["FAIL: (d) fidelity: raised RuntimeError: no checkpoint from (c) to score",
                          "FAIL: (d) tau: no verdict (stage fidelity raised RuntimeError: no checkpoint from (c) to score)"]


def test_the_loops_step_is_timed_across_epochs(tiny_run: Any) -> None:
    """(b) times more steps than a toy epoch holds (the dry run's 18): the batches go on into the next epoch."""
    from supernet.training.loop import BatchSource

    steps, tiny_run.step = tiny_run.steps_per_epoch + 2, 0
    rate = bench_gpu.ours_images_per_second(tiny_run, BatchSource(tiny_run), steps=steps, warmup=1,
                                            deadline=bench_gpu.Deadline(1e9))
    assert rate > 0 and tiny_run.step == steps + 1
