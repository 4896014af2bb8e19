"""Training loop: sandwich planning, EMA math, exact resume, the budget loss, the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from search_spaces import get_space
from supernet.nn.models import build_supernet
from supernet.settings import config_dir, settings_dict
from supernet.ssl import BYOL
from supernet.train import load_train_settings
from supernet.training.loop import train
from supernet.training.sandwich import plan_subnets, relative_size
from supernet.training.schema import TrainConfig

pytestmark = pytest.mark.usefixtures("single_thread")  # small networks: no OpenMP spin-waiting

FAST = [
    "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=256", "data.holdout_size=200", "data.resolution=16", "batch_size=32", "knn.enabled=false",
    "progress=false", "ssl.proj_hidden_dim=64", "ssl.pred_hidden_dim=64", "ssl.proj_dim=32",
]


def compose_train(overrides: list[str]) -> TrainConfig:
    return load_train_settings(overrides)


def method_state(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)["method"]


def test_plan_is_a_function_of_seed_and_step() -> None:
    space = get_space("tiny")
    kwargs = dict(total_steps=100, num_subnets=4, stage_min_widths=[1.0, 0.75, 0.5, 0.25], stage_ends=[0.25, 0.5, 0.75, 1.0])
    first = plan_subnets(space, seed=3, step=80, **kwargs)
    assert plan_subnets(space, seed=3, step=80, **kwargs) == first
    assert [label for label, _ in first] == ["max", "min", "random0", "random1"]
    others = [plan_subnets(space, seed=3, step=s, **kwargs) for s in range(81, 90)]
    assert any(plan != first for plan in others)
    assert plan_subnets(space, seed=4, step=80, **kwargs) != first or plan_subnets(space, seed=5, step=80, **kwargs) != first
    # slow start: only the full network in stage 1
    assert [label for label, _ in plan_subnets(space, seed=3, step=10, **kwargs)] == ["max"]
    # stage 2 (min width 0.75): every sampled width is at least 0.75 of its maximum
    for _, cfg in plan_subnets(space, seed=3, step=30, **kwargs):
        for layer in space.layers:
            assert cfg.channels[layer.name] >= 0.75 * layer.max_channels - 1e-9


def test_ema_update_math() -> None:
    torch.manual_seed(0)
    method = BYOL(build_supernet("tiny"), proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16)
    with torch.no_grad():
        for p in method.encoder.parameters():
            p.add_(torch.randn_like(p))
    student = [p.detach().clone() for p in method.encoder.parameters()]
    teacher = [p.detach().clone() for p in method.teacher_encoder.parameters()]
    method.update_teacher(0.9)
    for s, t, new in zip(student, teacher, method.teacher_encoder.parameters()):
        torch.testing.assert_close(new, 0.9 * t + 0.1 * s)
    assert any(not torch.equal(s, t) for s, t in zip(student, teacher))


def test_few_steps_lower_the_ssl_loss(tmp_path: Path) -> None:
    cfg = compose_train([*FAST, "epochs=6", "gates.enabled=false", "sandwich.enabled=false", f"out_dir={tmp_path}",
                         "log_every_steps=1", "optim.lr=0.5", "optim.warmup_epochs=0"])
    train(cfg)
    losses = [r["max/byol"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(losses) == 48
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05


@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_resume_equals_uninterrupted(tmp_path: Path, pipeline: str, capsys) -> None:
    """Bit for bit with either pipeline; the resumed invocation says ``auto`` and keeps the checkpoint's."""
    common = [*FAST, "epochs=2", "data.max_images=64", "batch_size=16", "checkpoint_every_steps=2"]
    train(compose_train([*common, f"data.pipeline={pipeline}", f"out_dir={tmp_path / 'straight'}", "max_steps=6"]))
    train(compose_train([*common, f"data.pipeline={pipeline}", f"out_dir={tmp_path / 'resumed'}", "max_steps=3"]))
    train(compose_train([*common, "data.pipeline=auto", f"out_dir={tmp_path / 'resumed'}", "max_steps=6", "resume=true"]))
    assert f"data pipeline: data.pipeline=auto keeps the checkpoint's {pipeline}" in capsys.readouterr().out
    straight, resumed = method_state(tmp_path / "straight"), method_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=0, msg=name)
    for run in ("straight", "resumed"):
        assert OmegaConf.load(tmp_path / run / "config.yaml").data.pipeline == pipeline


def test_auto_picks_the_device_on_a_cpu_with_room_and_both_pipelines_train(tmp_path: Path, capsys) -> None:
    """auto says what it chose and why, config.yaml records it; the two pipelines draw different
    augmentations of the same images in the same order, so their losses differ but stay alike."""
    losses = {}
    for pipeline in ("loader", "auto"):
        out = tmp_path / pipeline
        train(compose_train([*FAST, "epochs=1", "max_steps=4", f"data.pipeline={pipeline}", f"out_dir={out}",
                             "log_every_steps=1", "gates.enabled=false", "sandwich.enabled=false"]))
        losses[pipeline] = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                            if r["kind"] == "step"]
    printed = capsys.readouterr().out
    assert "data pipeline: data.pipeline=auto chose device: the uint8 store of 256 images at 28x28" in printed
    assert OmegaConf.load(tmp_path / "auto" / "config.yaml").data.pipeline == "device"
    assert len(losses["loader"]) == len(losses["auto"]) == 4 and losses["loader"] != losses["auto"]
    assert abs(np.mean(losses["loader"]) - np.mean(losses["auto"])) < 0.5


def test_budget_loss_moves_effective_flops_toward_target(tmp_path: Path) -> None:
    # at the reference threshold and full width the ratio is one quantity the budget can move; the
    # per-layer bounds (tight at sqrt(t) for the first epochs) are switched off to see the budget alone
    cfg = compose_train([*FAST, "epochs=4", "sandwich.enabled=false", "gates.target=0.3", "gates.budget_weight=20",
                         "gates.bound_weight=0", "gates.sample_thresholds=false", "gates.sample_widths=false",
                         f"out_dir={tmp_path}", "log_every_steps=1"])
    train(cfg)
    ratios = [r["gated/flops_ratio"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "step"]
    assert abs(np.mean(ratios[-4:]) - 0.3) < abs(np.mean(ratios[:4]) - 0.3) - 0.05


@pytest.mark.parametrize("overrides", [["ssl=moco", "ssl.queue_size=64"], ["ssl=moco", "ssl.queue_size=64",
                                       "ssl.online_distillation=true"], ["views=sslight", "views.num_local=2"]])
def test_other_methods_and_views_train(tmp_path: Path, overrides: list[str]) -> None:
    cfg = compose_train([*FAST, *overrides, "epochs=1", "data.max_images=64", "batch_size=16", f"out_dir={tmp_path}",
                         "log_every_steps=1", "sandwich.stage_min_widths=[0.5]", "sandwich.stage_ends=[1.0]"])
    train(cfg)
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len([s for s in steps if s["kind"] == "step"]) == 4
    assert all(np.isfinite(s["loss"]) for s in steps if s["kind"] == "step")
    assert steps[0]["num_subnets"] == 4.0  # no slow start here: the sandwich ran


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    train(compose_train([*FAST, "epochs=1", "max_steps=1", f"out_dir={tmp_path}"]))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    from supernet.io.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="resume=true"):
        train(compose_train([*FAST, "epochs=1", "max_steps=1", f"out_dir={tmp_path}"]))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("group", ["model", "data", "ssl", "views"])
def test_every_yaml_composes_to_its_own_values(group: str) -> None:
    """A group's YAML sets what it says, except where train.yaml (composed after it) sets a key itself."""
    top_level = OmegaConf.to_container(OmegaConf.load(config_dir() / "train.yaml")).get(group) or {}
    for path in sorted((config_dir() / group).glob("*.yaml")):
        composed = settings_dict(compose_train(["recipe=none", f"{group}={path.stem}"]))[group]
        written = {**OmegaConf.to_container(OmegaConf.load(path)), **top_level}
        assert written and {key: composed[key] for key in written} == written, path.name


def test_cli_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "supernet.train", *FAST, "epochs=1", "max_steps=2", "knn.enabled=true",
         "knn.bank_size=200", "knn.calibration_images=64", f"out_dir={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 2 and payload["space"] == "tiny"
    assert (out / "config.yaml").exists() and json.loads((out / "run_info.json").read_text())["version"]
    epoch = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"epoch"' in line][-1]
    assert set(epoch["knn"]) == {"max", "mid", "min"}


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supernet.train", "data=imagefolder", f"data.root={tmp_path / 'missing'}",
         f"out_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr.strip().splitlines()[-1]


def test_cli_bad_pipeline_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "supernet.train", *FAST, "data.pipeline=gpu", f"out_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(lines) == 1
    assert lines[0].startswith("error: data.pipeline") and all(name in lines[0] for name in ("auto", "device", "loader"))


def test_collapsed_features_stop_the_run_and_keep_the_last_checkpoint(tmp_path: Path) -> None:
    from supernet.training.loop import TrainingStopped

    train(compose_train([*FAST, "epochs=1", "max_steps=2", f"out_dir={tmp_path}"]))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    # a floor no embedding can reach: the check (at the first log or checkpoint step, here the run's
    # last) must fire and write nothing
    with pytest.raises(TrainingStopped, match="features collapsed at step 4"):
        train(compose_train([*FAST, "epochs=1", "max_steps=4", "collapse_std=1e6", "resume=true", f"out_dir={tmp_path}"]))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_non_finite_loss_stops_the_run(tmp_path: Path) -> None:
    from supernet.training.loop import TrainingStopped

    with pytest.raises(TrainingStopped, match="not finite|collapsed"):
        train(compose_train([*FAST, "epochs=2", "optim.lr=1e30", "optim.warmup_epochs=0", f"out_dir={tmp_path}"]))
    if (tmp_path / "checkpoint.pt").exists():  # whatever was saved before the blow-up is a finite state
        state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["method"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize(("mode", "expected"), [("per_network", 4), ("per_batch", 1)])
def test_optimizer_steps_per_network_or_per_batch(mode: str, expected: int, tmp_path: Path) -> None:
    """US3L steps the optimizer after each network's loss (3 sandwich networks + the gated pass = 4);
    SlimCLR adds the gradients of all of them up into one step."""
    from supernet.training.loop import train_step
    from supernet.training.setup import build_run

    cfg = compose_train([*FAST, "epochs=1", f"out_dir={tmp_path}", f"sandwich.optimizer_steps={mode}",
                         "sandwich.num_subnets=3"])
    run = build_run(cfg)
    calls = []
    original = run.optimizer.step
    run.optimizer.step = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    views = [torch.randn(32, 3, 16, 16), torch.randn(32, 3, 16, 16)]
    run.step = run.total_steps - 1  # last stage: the whole sandwich trains
    terms = train_step(run, views)
    assert terms["num_subnets"] == 3.0 and len(calls) == expected


def test_slimclr_weights_scale_each_sub_network_loss_by_one(tmp_path: Path) -> None:
    from supernet.training.loop import scalars, train_step
    from supernet.training.setup import build_run

    logged = {}
    for weighting in ("equal", "slimclr"):
        cfg = compose_train([*FAST, "epochs=1", f"out_dir={tmp_path / weighting}", f"sandwich.loss_weights={weighting}",
                             "gates.enabled=false", "sandwich.optimizer_steps=per_batch"])
        run = build_run(cfg)
        run.step = run.total_steps - 1
        torch.manual_seed(0)
        views = [torch.randn(32, 3, 16, 16), torch.randn(32, 3, 16, 16)]
        logged[weighting] = scalars(train_step(run, views))
    equal, slimclr = logged["equal"], logged["slimclr"]
    # one accumulated step on the same weights and data: every logged (unweighted) term is equal, and
    # the totals differ by the full network's extra weight, sum of the sub-networks' widths, times its loss
    assert {k: v for k, v in slimclr.items() if "/" in k} == pytest.approx({k: v for k, v in equal.items() if "/" in k})
    plan = plan_subnets(run.space, seed=cfg.seed, step=run.step, total_steps=run.total_steps, num_subnets=4,
                        stage_min_widths=list(cfg.sandwich.stage_min_widths), stage_ends=list(cfg.sandwich.stage_ends))
    sub_widths = sum(relative_size(run.space, sub) for label, sub in plan if label != "max")
    assert slimclr["loss"] - equal["loss"] == pytest.approx(sub_widths * equal["max/byol"], rel=1e-4)


def test_knn_monitor_every_few_epochs_and_at_the_end(tmp_path: Path) -> None:
    """knn.every_epochs=2 over 3 epochs: the baseline, epoch 2 and the last epoch; epochs 1 has none."""
    FEW = [*FAST, "knn.enabled=true", "knn.bank_size=100", "knn.val_size=50", "knn.calibration_images=64"]
    train(compose_train([*FEW, "epochs=3", "knn.every_epochs=2", "gates.enabled=false", f"out_dir={tmp_path}"]))
    records = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert records[0]["kind"] == "baseline"
    epochs = {r["epoch"]: "knn" in r for r in records if r["kind"] == "epoch"}
    assert epochs == {1: False, 2: True, 3: True}
    # learning.png beside the run, drawn from the same records (epoch 0: the untrained network)
    from PIL import Image

    from supernet.training.logs import learning_curves

    curves, _ = learning_curves(tmp_path / "metrics.jsonl")
    assert sorted(curves) == ["max", "mid", "min"] and all([e for e, _ in c] == [0, 2, 3] for c in curves.values())
    with Image.open(tmp_path / "learning.png") as image:
        assert image.format == "PNG" and image.width > 300
    assert not list(tmp_path.glob(".learning.png.*"))  # written atomically: no temporary left


def test_a_warm_up_longer_than_the_run_is_fitted_before_training_and_said_once(tmp_path: Path, capsys) -> None:
    """Issue 21 item 12: ``recipe=gpu_10min epochs=1`` (a 2-epoch warm-up) died inside the loop with
    "warmup_steps must be in [0, total_steps]". Decided before training: warm up over the first half, one line."""
    train(compose_train([*FAST, "epochs=1", "optim.warmup_epochs=2", "gates.enabled=false", "sandwich.enabled=false",
                         "log_every_steps=1", f"out_dir={tmp_path}"]))
    notes = [line for line in capsys.readouterr().err.splitlines() if "warmup" in line]
    assert len(notes) == 1 and "warming up over its first half (4 steps)" in notes[0]
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    peak = 0.5 * 32 / 256
    assert len(lrs) == 8 and lrs[3] == pytest.approx(peak) and lrs[0] == pytest.approx(peak / 4)
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < peak / 2


@pytest.mark.parametrize("data", ["cifar10", "cifar100", "stl10", "imagefolder", "mnist_embedded"])
def test_default_workers_follow_the_cores(data: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 13: on a 2-core machine the default CIFAR run made DataLoader warn about 4 workers."""
    import os
    import warnings

    from torch.utils.data import DataLoader

    from supernet.devices import data_workers

    for cores, processes in ((2, "1"), (1, "1"), (64, "1"), (16, "8")):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: set(range(cores)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
        workers = data_workers(compose_train([f"data={data}"]).data.num_workers)
        assert workers <= max(1, cores // int(processes)) and (data == "mnist_embedded") == (workers == 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "This DataLoader will create N worker processes ..." would raise
            DataLoader(list(range(4)), num_workers=workers).check_worker_number_rationality()
    assert data_workers(3) == 3  # a number given is kept
