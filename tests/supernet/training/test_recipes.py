"""The published recipes as config files: each composes, and each pins the numbers of its paper's code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from supernet.settings import config_dir
from supernet.train import load_train_settings
from supernet.training.loop import train
from supernet.training.setup import view_options

NEW_RECIPES = ["us3l_simclr_cifar", "us3l_simsiam_cifar", "us3l_dino_cifar", "sslight_dino_mobilenet",
               "krishna_vicreg_gated_cifar", "krishna_gated_cifar", "sslight_swav_mobilenet", "slimclr_mocov3_vit"]


def _recipe(name: str):
    return load_train_settings([f"recipe={name}"])


def test_every_recipe_composes() -> None:
    names = sorted(path.stem for path in (config_dir() / "recipe").glob("*.yaml"))
    assert {"quickstart", "us3l_byol_cifar", "us3l_simclr_momentum_cifar", "slimclr_mocov2", *NEW_RECIPES} <= set(names)
    for name in names:
        _recipe(name)


def test_us3l_byol_cifar() -> None:
    cfg = _recipe("us3l_byol_cifar")
    assert (cfg.model.space, cfg.data.name, cfg.ssl.name, cfg.epochs, cfg.batch_size) == (
        "resnet18_cifar", "cifar100", "byol", 400, 512)
    assert cfg.optim.lr * cfg.batch_size / 256 == pytest.approx(0.05) and cfg.optim.warmup_epochs == 0
    assert (cfg.ssl.proj_layers, cfg.ssl.proj_hidden_dim, cfg.ssl.proj_dim, cfg.ssl.pred_hidden_dim) == (3, 2048, 2048, 2048)
    assert (cfg.ssl.base_momentum, cfg.ssl.momentum_schedule, cfg.ssl.byol_loss) == (0.99, "constant", "negative_cosine")
    assert (cfg.sandwich.loss_weights, cfg.sandwich.optimizer_steps, cfg.sandwich.sampling) == ("equal", "per_network", "uniform")
    assert cfg.regularization.weight_decay == pytest.approx(2 * 2.5e-4) and not cfg.gates.enabled


def test_us3l_simclr_momentum_cifar() -> None:
    cfg = _recipe("us3l_simclr_momentum_cifar")
    assert cfg.ssl.name == "simclr_momentum" and cfg.ssl.temperature == 0.5 and cfg.ssl.proj_dim == 256
    assert cfg.optim.lr * cfg.batch_size / 256 == pytest.approx(0.5)
    assert cfg.regularization.weight_decay == pytest.approx(2 * 5e-5)


def test_slimclr_mocov2() -> None:
    cfg = _recipe("slimclr_mocov2")
    assert (cfg.model.space, cfg.epochs, cfg.batch_size) == ("resnet50", 200, 1024)
    assert cfg.optim.lr * cfg.batch_size / 256 == pytest.approx(0.2)
    assert (cfg.ssl.temperature, cfg.ssl.queue_size, cfg.ssl.base_momentum) == (0.2, 65536, 0.999)
    assert cfg.ssl.online_distillation and cfg.sandwich.loss_weights == "slimclr"
    assert cfg.sandwich.stage_ends == [0.5, 1.0] and cfg.sandwich.stage_min_widths == [1.0, 0.25]  # slow start: half
    assert cfg.sandwich.sampling == "fixed" and cfg.sandwich.fixed_widths == [1.0, 0.75, 0.5, 0.25]
    assert cfg.sandwich.optimizer_steps == "per_batch"
    assert list(cfg.views.global_scale) == [0.2, 1.0]  # MoCo v2's crops, also at 224 px
    assert cfg.ssl.shuffle_bn and cfg.ssl.bn_splits == 8  # 8 GPUs x 128, per-GPU BN (use_bn_sync=0)


@pytest.mark.parametrize(("name", "splits"), [("quickstart", 4), ("slimclr_mocov2", 8), ("us3l_simclr_momentum_cifar", 4)])
def test_methods_contrasting_against_teacher_keys_shuffle_bn(name: str, splits: int) -> None:
    cfg = _recipe(name)
    assert cfg.ssl.name in ("moco", "simclr_momentum") and cfg.ssl.shuffle_bn and cfg.ssl.bn_splits == splits
    assert cfg.batch_size % cfg.ssl.bn_splits == 0


def test_krishna_recipe_takes_one_larc_step_per_batch(tmp_path: Path) -> None:
    """Dense and gated losses add up into one step of solo-learn's clipped LARS (their training_step)."""
    import torch

    from supernet.training.loop import train_step
    from supernet.training.optim import LARC
    from supernet.training.setup import build_run

    cfg = load_train_settings(["recipe=krishna_vicreg_gated_cifar", "model=tiny", "data=mnist_embedded", "data.resolution=16",
                               "data.max_images=64", "batch_size=32", "knn.enabled=false", "progress=false",
                               "ssl.proj_hidden_dim=32", "ssl.proj_dim=32", "ssl.pred_hidden_dim=32", f"out_dir={tmp_path}"])
    run = build_run(cfg)
    assert isinstance(run.optimizer, LARC) and run.gate_flops is not None
    calls = []
    original = run.optimizer.step
    run.optimizer.step = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
    terms = train_step(run, [torch.randn(32, 3, 16, 16), torch.randn(32, 3, 16, 16)])
    assert len(calls) == 1 and "gated/invariance" in terms and "max/invariance" in terms


@pytest.mark.parametrize("name", ["krishna_gated_cifar", "krishna_vicreg_gated_cifar"])
def test_krishna_gated_cifar(name: str) -> None:
    cfg = _recipe(name)
    assert (cfg.model.space, cfg.data.name, cfg.epochs, cfg.batch_size) == ("resnet18_cifar", "cifar10", 500, 512)
    # solo-learn's clipped LARS around SGD, one step per batch on the summed loss, its VICReg variance term
    assert cfg.optim.name == "larc" and cfg.optim.lars_eta == 0.02 and cfg.optim.lr * 512 / 256 == pytest.approx(0.6)
    assert cfg.sandwich.optimizer_steps == "per_batch" and cfg.ssl.variance_over_views == "sum"
    assert list(cfg.views.global_scale) == [0.2, 1.0]
    gates = cfg.gates
    assert (gates.target, gates.budget_weight, gates.bound_weight, gates.bound_rate) == (0.5, 5.0, 1.0, 0.02)
    assert gates.separate_bn and gates.link == "dense" and not gates.sample_widths and not cfg.sandwich.enabled
    # their SSL loss: VICReg 25/25/1 on a 2048-2048-2048 projector (vicreg_gating.sh)
    assert cfg.ssl.name == "vicreg" and (cfg.ssl.invariance_weight, cfg.ssl.variance_weight, cfg.ssl.covariance_weight) == (25, 25, 1)
    assert (cfg.ssl.proj_layers, cfg.ssl.proj_hidden_dim, cfg.ssl.proj_dim) == (3, 2048, 2048)


def test_us3l_simclr_cifar() -> None:
    cfg = _recipe("us3l_simclr_cifar")  # configs/cifar/us_resnet18_simclr_cifar.yaml
    assert (cfg.model.space, cfg.data.name, cfg.ssl.name, cfg.epochs, cfg.batch_size) == (
        "resnet18_cifar", "cifar100", "simclr", 400, 512)
    assert cfg.optim.lr * cfg.batch_size / 256 == pytest.approx(0.5) and cfg.optim.warmup_epochs == 0
    assert (cfg.ssl.temperature, cfg.ssl.proj_layers, cfg.ssl.proj_hidden_dim, cfg.ssl.proj_dim) == (0.5, 3, 2048, 256)
    assert cfg.ssl.base_momentum == 0.0  # no momentum encoder: sub-networks regress the full-width student
    assert cfg.sandwich.stage_min_widths == [0.25] and cfg.sandwich.num_subnets == 3  # no dynamic sampling
    assert not cfg.regularization.group and cfg.regularization.weight_decay == pytest.approx(1e-4)


def test_us3l_simsiam_cifar() -> None:
    cfg = _recipe("us3l_simsiam_cifar")  # configs/cifar/us_resnet18_simsiam_cifar.yaml
    assert (cfg.ssl.name, cfg.epochs, cfg.batch_size) == ("simsiam", 400, 512)
    assert cfg.optim.lr * cfg.batch_size / 256 == pytest.approx(0.05)
    assert (cfg.ssl.proj_layers, cfg.ssl.proj_hidden_dim, cfg.ssl.proj_dim, cfg.ssl.pred_hidden_dim) == (3, 2048, 2048, 2048)
    assert cfg.ssl.base_momentum == 0.0 and cfg.sandwich.stage_min_widths == [0.25]
    assert not cfg.regularization.group and cfg.regularization.weight_decay == pytest.approx(5e-4)


def test_us3l_dino_cifar() -> None:
    cfg = _recipe("us3l_dino_cifar")
    ssl = cfg.ssl
    assert (cfg.model.space, cfg.ssl.name, cfg.epochs, cfg.batch_size) == ("resnet18_cifar", "dino", 400, 512)
    assert (ssl.student_temperature, ssl.warmup_teacher_temperature, ssl.teacher_temperature) == (0.1, 0.04, 0.07)
    assert (ssl.warmup_teacher_temperature_epochs, ssl.center_momentum, ssl.freeze_prototypes_epochs) == (30, 0.9, 1.0)
    assert (ssl.base_momentum, ssl.momentum_schedule) == (0.996, "cosine")
    assert (ssl.proj_layers, ssl.proj_hidden_dim, ssl.proj_dim, ssl.num_prototypes) == (3, 2048, 256, 4096)
    assert cfg.sandwich.stage_min_widths == [1.0, 0.75, 0.5, 0.25] and cfg.regularization.group  # US3L's sandwich


def test_sslight_dino_mobilenet() -> None:
    cfg = _recipe("sslight_dino_mobilenet")  # src/config/exp_yamls/mnv2/dino.yaml + defaults.py
    ssl = cfg.ssl
    assert (cfg.model.space, cfg.ssl.name, cfg.views.name, cfg.epochs, cfg.batch_size) == (
        "mobilenet_v2", "dino", "sslight", 200, 1024)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.final_lr, cfg.optim.warmup_epochs) == ("lars", 0.48, 0.0048, 10)
    assert cfg.regularization.weight_decay == pytest.approx(1e-6) and not cfg.regularization.group
    assert (ssl.num_prototypes, ssl.head_batch_norm, ssl.warmup_teacher_temperature_epochs) == (4096, True, 50)
    assert (ssl.base_momentum, ssl.momentum_schedule, ssl.teacher_temperature) == (0.996, "cosine", 0.07)
    assert (cfg.views.global_local_weight, cfg.views.global_global_weight, cfg.views.num_local) == (0.6, 0.4, 6)
    assert not cfg.sandwich.enabled and not cfg.gates.enabled


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("name", NEW_RECIPES)
def test_new_recipes_run_two_steps(tmp_path: Path, name: str) -> None:
    """Each recipe's method, views, optimizer and sandwich settings, on the tiny space and 64 digits."""
    cfg = load_train_settings([
        f"recipe={name}", "model=tiny", "data=mnist_embedded", "data.max_images=64", "data.holdout_size=200",
        "data.resolution=16", "batch_size=16", "knn.enabled=false", "progress=false", "max_steps=2", "log_every_steps=1",
        "ssl.proj_hidden_dim=32", "ssl.proj_dim=16", "ssl.pred_hidden_dim=32", "ssl.num_prototypes=64", f"out_dir={tmp_path}",
    ])
    assert cfg.epochs >= 200  # the recipe's own schedule length is kept; max_steps stops early
    train(cfg)
    steps = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(steps) == 2 and all(np.isfinite(step["loss"]) for step in steps)
    ssl_name = cfg.ssl.name
    expected = {"simclr": "max/ntxent", "simsiam": "max/simsiam", "dino": "max/dino", "vicreg": "max/invariance",
                "swav": "max/swav", "mocov3": "max/mocov3"}[ssl_name]
    assert expected in steps[0]
    if cfg.sandwich.enabled and cfg.sandwich.stage_min_widths[0] < 1.0:  # no slow start: sub-networks trained
        assert "min/distill" in steps[0]
    if cfg.gates.enabled:  # Krishna et al.: the gated network's VICReg against the dense network
        assert "gated/invariance" in steps[0] and "gated/budget" in steps[0]


def test_sslight_swav_mobilenet() -> None:
    cfg = _recipe("sslight_swav_mobilenet")  # src/config/exp_yamls/swav/swav_cnn_sslight.yaml + defaults.py
    ssl, views = cfg.ssl, view_options(_recipe("sslight_swav_mobilenet"))
    assert (cfg.model.space, ssl.name, cfg.views.name, cfg.epochs, cfg.batch_size) == ("mobilenet_v2", "swav", "sslight", 200, 1024)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.final_lr, cfg.optim.warmup_epochs) == ("lars", 0.3, 0.0048, 10)
    assert cfg.regularization.weight_decay == pytest.approx(1e-6) and not cfg.regularization.group
    assert (ssl.proj_hidden_dim, ssl.proj_dim, ssl.proj_layers, ssl.num_prototypes, ssl.temperature) == (4096, 128, 2, 3000, 0.1)
    assert (ssl.sinkhorn_iterations, ssl.sinkhorn_epsilon, ssl.freeze_prototypes_epochs) == (3, 0.05, 1.0)
    assert (ssl.queue_length, ssl.epoch_queue_starts) == (3840 - 3840 % 1024, 15)  # SSLight's rounding at batch 1024
    assert (views.num_local, views.global_scale, views.local_scale) == (6, (0.3, 1.0), (0.05, 0.3))
    assert views.jitter == (0.8, 0.8, 0.8, 0.2) and views.blur == (0.5, 0.5) and views.solarize == (0.0, 0.0)
    assert (cfg.views.global_global_weight, cfg.views.global_local_weight) == (0.4, 0.6)
    assert ssl.base_momentum == 0.0 and not cfg.sandwich.enabled and not cfg.gates.enabled


def test_slimclr_mocov3_vit() -> None:
    cfg = _recipe("slimclr_mocov3_vit")  # SlimCLR scripts/mocov3.sh + moco-v3 CONFIG.md's ViT-Small 1-node run
    ssl, views = cfg.ssl, view_options(_recipe("slimclr_mocov3_vit"))
    assert (cfg.model.space, ssl.name, cfg.epochs, cfg.batch_size, cfg.data.resolution) == ("vit_tiny", "mocov3", 300, 1024, 224)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.warmup_epochs) == ("adamw", 1.5e-4, 40)
    assert cfg.regularization.weight_decay == 0.1 and not cfg.regularization.group
    assert (ssl.proj_layers, ssl.proj_hidden_dim, ssl.proj_dim, ssl.pred_hidden_dim, ssl.temperature) == (3, 4096, 256, 4096, 0.2)
    assert (ssl.base_momentum, ssl.momentum_schedule) == (0.99, "cosine") and ssl.freeze_patch_embed
    assert ssl.online_distillation and cfg.sandwich.loss_weights == "slimclr" and cfg.sandwich.optimizer_steps == "per_batch"
    assert cfg.sandwich.stage_ends == [0.5, 1.0] and cfg.sandwich.stage_min_widths == [1.0, 0.25]  # slow start: half
    assert cfg.sandwich.sampling == "fixed" and cfg.sandwich.fixed_widths == [1.0, 0.75, 0.5, 0.25]
    assert views.global_scale == (0.08, 1.0) and views.blur == (1.0, 0.1) and views.solarize == (0.0, 0.2)
    assert views.jitter == (0.4, 0.4, 0.2, 0.1) and views.num_local == 0 and not cfg.gates.enabled


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("space", ["tiny", "vit_test"])
@pytest.mark.parametrize("name", ["sslight_swav_mobilenet", "slimclr_mocov3_vit"])
def test_swav_and_mocov3_recipes_train_with_the_sandwich(tmp_path: Path, name: str, space: str) -> None:
    """Both recipes through ``train()`` with sub-networks from the first step (SwAV's recipe trains one
    network; SlimCLR's starts slow): every term finite, the sub-networks' own terms logged."""
    cfg = load_train_settings([
        f"recipe={name}", f"model={space}", "data=mnist_embedded", "data.max_images=64", "data.holdout_size=200",
        "data.resolution=32", "batch_size=16", "knn.enabled=false", "progress=false", "max_steps=3", "log_every_steps=1",
        "ssl.proj_hidden_dim=32", "ssl.proj_dim=16", "ssl.pred_hidden_dim=32", "ssl.num_prototypes=64",
        "sandwich.enabled=true", "sandwich.stage_min_widths=[0.25]", "sandwich.stage_ends=[1.0]", f"out_dir={tmp_path}",
    ])
    train(cfg)
    steps = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert len(steps) == 3 and all(np.isfinite(v) for step in steps for v in step.values() if not isinstance(v, str))
    sub_terms = {"x0.25/infonce", "x0.25/kd"} if name == "slimclr_mocov3_vit" else {"min/distill"}
    assert sub_terms <= set(steps[0]) and steps[0]["num_subnets"] > 1


def test_sslight_views_follow_its_code() -> None:
    options = view_options(load_train_settings(["views=sslight", "data=cifar10"]))
    assert (options.num_local, options.global_scale, options.local_scale) == (6, (0.3, 1.0), (0.05, 0.3))
    assert options.blur == (1.0, 0.1) and options.local_blur == 0.5 and options.solarize == (0.0, 0.2)
    assert options.jitter == (0.4, 0.4, 0.2, 0.1) and options.flip and options.photometric


def test_digits_are_neither_flipped_nor_colour_jittered() -> None:
    options = view_options(load_train_settings(["data=mnist_embedded"]))
    assert not options.flip and not options.photometric and options.min_crop_scale == 0.5
