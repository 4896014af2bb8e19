"""What a run writes as it learns, beside its checkpoint (rank 0 only).

* ``metrics.jsonl``: one JSON record per line -- the ``baseline`` (kNN of the untrained network and of raw
  pixels), a ``step`` record every ``log_every_steps``, an ``epoch`` record at each epoch's end (with
  ``knn`` when the monitor ran);
* ``learning.png``: kNN top-1 of each monitored width per epoch, beside the untrained network's and raw
  pixels' lines (as ``pareto.png`` draws a search), redrawn atomically from ``metrics.jsonl`` after every
  kNN evaluation, so a resumed run's picture holds its earlier epochs too;
* ``tensorboard/``: the same numbers as TensorBoard event files, when the ``tensorboard`` package is
  installed (it is not a dependency; without it nothing is written and nothing is said).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from supernet.io.files import atomic_write

__all__ = ["LEARNING_PNG", "METRICS_JSONL", "TENSORBOARD_DIR", "RunLog", "learning_curves", "plot_learning"]

METRICS_JSONL = "metrics.jsonl"
LEARNING_PNG = "learning.png"
TENSORBOARD_DIR = "tensorboard"
_NOT_SCALARS = ("kind", "step", "epoch")


class RunLog:
    """``append(record)`` writes one record everywhere it goes; a no-op where ``enabled`` is false (ranks > 0)."""

    def __init__(self, out_dir: Path, *, enabled: bool) -> None:
        self.out_dir, self.enabled = out_dir, enabled
        self.metrics = out_dir / METRICS_JSONL
        self.writer = _tensorboard_writer(out_dir / TENSORBOARD_DIR) if enabled else None

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.metrics.open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            _write_scalars(self.writer, record)
        if "knn" in record:
            plot_learning(self.metrics, self.out_dir / LEARNING_PNG)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: torch.utils.tensorboard needs it
        return None
    return SummaryWriter(log_dir=str(folder))


def _write_scalars(writer: Any, record: dict[str, Any]) -> None:
    """Step records under ``train/``; kNN under ``knn/<width>`` (the baseline at step 0, with ``knn/raw_pixels``)."""
    step = int(record.get("step", 0))
    if record.get("kind") == "step":
        for name, value in record.items():
            if name not in _NOT_SCALARS and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"train/{name}", value, step)
    for width, score in record.get("knn", {}).items():
        writer.add_scalar(f"knn/{width}", score, step)
    if "raw_pixels" in record:
        writer.add_scalar("knn/raw_pixels", record["raw_pixels"], step)
    writer.flush()


def learning_curves(metrics: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any] | None]:
    """(each width's kNN per epoch, epoch 0 being the untrained network; the baseline record or None) from a
    ``metrics.jsonl``. An epoch recorded twice (a run resumed from before its end) counts as its last record."""
    baseline: dict[str, Any] | None = None
    epochs: dict[int, dict[str, float]] = {}
    for line in metrics.read_text().splitlines():
        if not line.strip().endswith("}"):
            continue  # a line cut short by a crash
        record = json.loads(line)
        if record.get("kind") == "baseline":
            baseline = record
        elif record.get("kind") == "epoch" and "knn" in record:
            epochs[int(record["epoch"])] = record["knn"]
    curves: dict[str, list[tuple[int, float]]] = {}
    for width, score in (baseline or {}).get("knn", {}).items():
        curves.setdefault(width, []).append((0, float(score)))
    for epoch in sorted(epochs):
        for width, score in epochs[epoch].items():
            curves.setdefault(width, []).append((epoch, float(score)))
    return curves, baseline


def plot_learning(metrics: Path, path: Path) -> dict[str, list[tuple[int, float]]]:
    """Draw ``learning.png`` (matplotlib's Agg canvas, no pyplot state) from ``metrics``; returns the curves drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves, baseline = learning_curves(metrics)
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (width, points) in enumerate(curves.items()):
        colour = f"C{index}"
        axes.plot([e for e, _ in points], [100 * s for _, s in points], marker="o", color=colour, label=f"{width} width")
        if baseline is not None and width in baseline.get("knn", {}):
            axes.axhline(100 * baseline["knn"][width], color=colour, linestyle="--", linewidth=1,
                         label=f"{width} untrained")
    if baseline is not None and "raw_pixels" in baseline:
        axes.axhline(100 * baseline["raw_pixels"], color="0.4", linestyle=":", linewidth=1.5, label="raw pixels")
    where = f" on {baseline['val_images']:,} {baseline['val_source']} images" if baseline and "val_images" in baseline else ""
    axes.set(xlabel="epoch (0: untrained)", ylabel="kNN top-1 (%)", title=f"kNN top-1 of each width{where}")
    axes.grid(alpha=0.3)
    if curves or baseline is not None:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=120))
    return curves
