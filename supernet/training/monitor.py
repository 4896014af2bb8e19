"""kNN monitoring during training: the max, middle and min widths, BN recalibrated (US-Nets)."""

from __future__ import annotations

from typing import Any

import torch

from search_spaces import SubnetConfig
from supernet.evaluation import knn_score, raw_pixel_knn
from supernet.nn.bn import recalibrate_bn
from supernet.training.setup import Run

__all__ = ["log_baselines", "monitor_knn", "monitored_widths"]


def monitored_widths(run: Run) -> dict[str, SubnetConfig]:
    return {"max": run.space.max_config(), "mid": run.space.uniform_config(0.5), "min": run.space.min_config()}


@torch.no_grad()
def monitor_knn(run: Run) -> dict[str, float]:
    """kNN top-1 on the held-out split of the max, middle and min widths, BN recalibrated.

    Leaves the training RNG, the method's train/eval mode and the supernet's active config as they were.
    """
    knn, data = run.cfg.knn, run.eval_data
    assert data is not None
    was_training = run.method.training
    results = {}
    with torch.random.fork_rng(devices=[]):
        for label, subnet in monitored_widths(run).items():
            network = run.encoder.extract(subnet).to(run.device)
            recalibrate_bn(network, data.calibration, len(data.calibration), batch_size=knn.batch_size, seed=knn.seed,
                           device=run.device)
            results[label] = knn_score(network, data, k=knn.k, temperature=knn.temperature, batch_size=knn.batch_size,
                                       device=run.device)
    run.method.train(was_training)
    run.encoder.set_max()
    return results


def log_baselines(run: Run) -> dict[str, Any]:
    """The step-0 record every later kNN is read against: the untrained network and raw pixels.

    Same widths, same BN recalibration and same evaluation images as :func:`monitor_knn`.
    """
    knn, data = run.cfg.knn, run.eval_data
    assert data is not None and run.step == 0
    untrained = monitor_knn(run)
    pixels = raw_pixel_knn(data, k=knn.k, temperature=knn.temperature)
    print("step 0 (untrained): kNN top-1 " + ", ".join(f"{w} {s:.2%}" for w, s in untrained.items())
          + f"; raw pixels {pixels:.2%} ({len(data.val)} {data.val_source} images)")
    return {"kind": "baseline", "step": 0, "knn": untrained, "raw_pixels": pixels, "val_images": len(data.val),
            "val_source": data.val_source}
