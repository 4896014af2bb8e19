"""Baselines: the untrained twin is the run's own starting point; raw pixels are the flattened images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from supernet.data.datasets import load_image_data
from supernet.evaluation import (
    knn_accuracy,
    prepare_eval_data,
    raw_pixel_knn,
    untrained_network,
)
from supernet.train import load_train_settings
from supernet.training.setup import build_run


def test_untrained_twin_has_the_weights_a_run_with_that_seed_starts_from(tmp_path: Path) -> None:
    cfg = load_train_settings(["seed=7", "data.max_images=64", "data.holdout_size=16", "batch_size=16", "knn.enabled=false",
                               "progress=false", f"out_dir={tmp_path}"])
    run = build_run(cfg)
    sub = run.space.uniform_config(0.5)
    started = run.encoder.extract(sub).state_dict()
    twin = untrained_network(sub, seed=7, with_gates=cfg.gates.enabled).state_dict()
    assert started.keys() == twin.keys()
    assert all(torch.equal(started[name], twin[name]) for name in started)
    other = untrained_network(sub, seed=8, with_gates=cfg.gates.enabled).state_dict()
    assert not all(torch.equal(started[name], other[name]) for name in started)


def test_raw_pixel_knn_is_the_knn_of_the_flattened_images() -> None:
    data = load_image_data("mnist_embedded", root=None, max_images=300, holdout_size=100, download=False, seed=0)
    eval_data = prepare_eval_data(data, resolution=16, calibration_images=10, bank_size=300, seed=0)
    expected = knn_accuracy(eval_data.bank.float().flatten(1), eval_data.bank_labels, eval_data.val.float().flatten(1),
                            eval_data.val_labels, num_classes=10)
    # chunks smaller than k exercise the running top-k across chunks
    assert raw_pixel_knn(eval_data, chunk_size=7) == pytest.approx(expected)
    assert expected > 0.5  # digits: pixels alone are far above chance
