"""The published recipes as config files: each composes, and each pins the numbers of its paper's code."""

from __future__ import annotations

import pytest

from supernet.settings import config_dir
from supernet.train import load_train_settings
from supernet.training.setup import view_options


def _recipe(name: str):
    return load_train_settings([f"recipe={name}"])


def test_every_recipe_composes() -> None:
    names = sorted(path.stem for path in (config_dir() / "recipe").glob("*.yaml"))
    assert {"quickstart", "us3l_byol_cifar", "us3l_simclr_momentum_cifar", "slimclr_mocov2", "krishna_gated_cifar"} <= set(names)
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


def test_krishna_gated_cifar() -> None:
    cfg = _recipe("krishna_gated_cifar")
    assert (cfg.model.space, cfg.data.name, cfg.epochs, cfg.batch_size) == ("resnet18_cifar", "cifar10", 500, 512)
    assert cfg.optim.name == "lars" and cfg.optim.lars_eta == 0.02 and cfg.optim.lr * 512 / 256 == pytest.approx(0.6)
    gates = cfg.gates
    assert (gates.target, gates.budget_weight, gates.bound_weight, gates.bound_rate) == (0.5, 5.0, 1.0, 0.02)
    assert gates.separate_bn and gates.link == "dense" and not gates.sample_widths and not cfg.sandwich.enabled


def test_sslight_views_follow_its_code() -> None:
    options = view_options(load_train_settings(["views=sslight", "data=cifar10"]))
    assert (options.num_local, options.global_scale, options.local_scale) == (6, (0.3, 1.0), (0.05, 0.3))
    assert options.blur == (1.0, 0.1) and options.local_blur == 0.5 and options.solarize == (0.0, 0.2)
    assert options.jitter == (0.4, 0.4, 0.2, 0.1) and options.flip and options.photometric


def test_digits_are_neither_flipped_nor_colour_jittered() -> None:
    options = view_options(load_train_settings(["data=mnist_embedded"]))
    assert not options.flip and not options.photometric and options.min_crop_scale == 0.5
