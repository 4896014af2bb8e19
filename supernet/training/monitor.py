"""kNN monitoring during training: the max, middle and min widths, BN recalibrated (US-Nets)."""

from __future__ import annotations

import torch

from search_spaces import SubnetConfig
from supernet.evaluation import knn_score
from supernet.nn.bn import recalibrate_bn
from supernet.training.setup import Run

__all__ = ["monitor_knn", "monitored_widths"]


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
