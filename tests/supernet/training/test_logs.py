"""A run's records: metrics.jsonl, learning.png drawn from it, TensorBoard events when tensorboard imports."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from supernet.training.logs import RunLog, plot_learning

BASELINE = {"kind": "baseline", "step": 0, "knn": {"max": 0.30, "min": 0.25}, "raw_pixels": 0.35, "val_images": 50,
            "val_source": "holdout"}


def _write(path: Path, records: list[dict[str, Any]], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_learning_png_draws_each_width_from_the_untrained_network_on(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write(metrics, [BASELINE, {"kind": "step", "step": 4, "epoch": 0, "loss": 1.0},
                     {"kind": "epoch", "step": 8, "epoch": 1},
                     {"kind": "epoch", "step": 16, "epoch": 2, "knn": {"max": 0.40, "min": 0.31}},
                     {"kind": "epoch", "step": 16, "epoch": 2, "knn": {"max": 0.42, "min": 0.33}},  # resumed: the last
                     {"kind": "epoch", "step": 24, "epoch": 3, "knn": {"max": 0.50, "min": 0.36}}],
           tail='{"kind": "step", "st')  # a line a crash cut short
    curves = plot_learning(metrics, tmp_path / "learning.png")
    assert curves == {"max": [(0, 0.30), (2, 0.42), (3, 0.50)], "min": [(0, 0.25), (2, 0.33), (3, 0.36)]}
    with Image.open(tmp_path / "learning.png") as image:
        assert image.format == "PNG"


def test_without_tensorboard_nothing_is_written_or_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as without the package
    log = RunLog(tmp_path, enabled=True)
    log.append({"kind": "step", "step": 1, "loss": 0.5})
    log.close()
    assert log.writer is None and not (tmp_path / "tensorboard").exists()
    assert capsys.readouterr() == ("", "")
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"kind": "step", "step": 1, "loss": 0.5}


def test_tensorboard_gets_the_step_terms_and_each_width_knn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[tuple[str, float, int]] = []
    opened: list[str] = []

    class SummaryWriter:
        def __init__(self, log_dir: str) -> None:
            opened.append(log_dir)

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def flush(self) -> None:
            pass

        def close(self) -> None:
            opened.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter))
    log = RunLog(tmp_path, enabled=True)
    log.append(BASELINE)
    log.append({"kind": "step", "step": 10, "epoch": 0, "loss": 0.5, "max/byol": -0.9, "lr": 0.1})
    log.append({"kind": "epoch", "step": 20, "epoch": 1, "knn": {"max": 0.4, "min": 0.3}})
    log.close()
    assert opened == [str(tmp_path / "tensorboard"), "closed"]
    assert written == [("knn/max", 0.30, 0), ("knn/min", 0.25, 0), ("knn/raw_pixels", 0.35, 0),
                       ("train/loss", 0.5, 10), ("train/max/byol", -0.9, 10), ("train/lr", 0.1, 10),
                       ("knn/max", 0.4, 20), ("knn/min", 0.3, 20)]
    assert (tmp_path / "learning.png").exists()


def test_other_ranks_write_nothing(tmp_path: Path) -> None:
    log = RunLog(tmp_path, enabled=False)
    log.append(BASELINE)
    log.close()
    assert list(tmp_path.iterdir()) == []
