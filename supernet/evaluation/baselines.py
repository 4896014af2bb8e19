"""What every accuracy is reported beside: the same network untrained, and no network at all.

DESIGN.md §6: a trained encoder that does not clearly beat its untrained twin (same architecture,
random initialisation, BatchNorm recalibrated the same way) has learned nothing, whatever its
absolute number; raw pixels (the flattened, normalised images as features) are the floor any
encoder must clear.
"""

from __future__ import annotations

import torch

from search_spaces import SubnetConfig, get_space
from supernet.evaluation.data import EvalData
from supernet.evaluation.knn import raw_pixel_knn
from supernet.evaluation.linear import linear_probe
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet, build_supernet

__all__ = ["RAW_PIXEL_PROBE_MAX_DIM", "raw_pixel_probe", "raw_pixel_knn", "untrained_network"]

RAW_PIXEL_PROBE_MAX_DIM = 3 * 64 * 64  # a logistic regression on more raw dimensions is not worth its cost here


def untrained_network(cfg: SubnetConfig, *, seed: int, with_gates: bool = True,
                      gate_options: GateOptions | None = None) -> SuperNet:
    """The sub-network ``cfg`` of a supernet freshly initialised under ``torch.manual_seed(seed)``.

    With the seed and gate settings a run trained with (the gates' parameters are drawn between the
    convolutions'), these are the weights that run started from. The global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        supernet = build_supernet(get_space(cfg.space), with_gates=with_gates or cfg.gated, gate_options=gate_options)
    return supernet.extract(cfg)


def raw_pixel_probe(data: EvalData, *, epochs: int, lr: float, weight_decay: float, seed: int) -> float | None:
    """Linear-probe top-1 on flattened pixels, or None above :data:`RAW_PIXEL_PROBE_MAX_DIM` dimensions."""
    if 3 * data.resolution**2 > RAW_PIXEL_PROBE_MAX_DIM:
        return None
    return linear_probe(data.bank.float().flatten(1), data.bank_labels, data.val.float().flatten(1), data.val_labels,
                        num_classes=data.num_classes, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed)
