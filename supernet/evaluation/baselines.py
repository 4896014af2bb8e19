"""What every accuracy is reported beside: the same network untrained, and no network at all.

DESIGN.md §6: a trained encoder that does not clearly beat its untrained twin (same architecture,
random initialisation, BatchNorm recalibrated the same way) has learned nothing, whatever its
absolute number; raw pixels (the flattened, normalised images as features) are the floor any
encoder must clear.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import SearchSpace, SubnetConfig, get_space
from supernet.evaluation.data import EvalData
from supernet.evaluation.knn import raw_pixel_knn
from supernet.evaluation.linear import linear_probe
from supernet.evaluation.protocols import linear_evaluation
from supernet.evaluation.semi import LabelFractionScore, semi_supervised_evaluation
from supernet.evaluation.settings import LinearEvalSettings, SemiSupervisedSettings
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet, build_supernet

__all__ = ["RAW_PIXEL_PROBE_MAX_DIM", "raw_pixel_knn", "raw_pixel_linear_evaluation", "raw_pixel_probe",
           "raw_pixel_semi_supervised", "untrained_network", "untrained_supernet"]

RAW_PIXEL_PROBE_MAX_DIM = 3 * 64 * 64  # a logistic regression on more raw dimensions is not worth its cost here


def untrained_network(cfg: SubnetConfig, *, seed: int, with_gates: bool = True,
                      gate_options: GateOptions | None = None) -> SuperNet:
    """The sub-network ``cfg`` of a supernet freshly initialised under ``torch.manual_seed(seed)``.

    With the seed and gate settings a run trained with (the gates' parameters are drawn between the
    convolutions'), these are the weights that run started from. The global RNG is left as it was.
    """
    supernet = untrained_supernet(get_space(cfg.space), seed=seed, with_gates=with_gates or cfg.gated,
                                  gate_options=gate_options)
    return supernet.extract(cfg)


def untrained_supernet(space: SearchSpace, *, seed: int, with_gates: bool = True,
                       gate_options: GateOptions | None = None) -> SuperNet:
    """The supernet of ``space`` freshly initialised under ``torch.manual_seed(seed)``: every
    sub-network's untrained twin at once (e.g. the widths of the switchable probe). The global RNG
    is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_supernet(space, with_gates=with_gates, gate_options=gate_options)


def raw_pixel_probe(data: EvalData, *, epochs: int, lr: float, weight_decay: float, seed: int) -> float | None:
    """Linear-probe top-1 on flattened pixels, or None above :data:`RAW_PIXEL_PROBE_MAX_DIM` dimensions."""
    if 3 * data.resolution**2 > RAW_PIXEL_PROBE_MAX_DIM:
        return None
    return linear_probe(data.bank.float().flatten(1), data.bank_labels, data.val.float().flatten(1), data.val_labels,
                        num_classes=data.num_classes, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed)


def raw_pixel_linear_evaluation(data: EvalData, *, settings: LinearEvalSettings | None = None, seed: int = 0,
                                device: torch.device | str = "cpu") -> float | None:
    """:func:`~supernet.evaluation.protocols.linear_evaluation` with the flattened, normalised (augmented)
    pixels as the features, or None above :data:`RAW_PIXEL_PROBE_MAX_DIM` dimensions."""
    if 3 * data.resolution**2 > RAW_PIXEL_PROBE_MAX_DIM:
        return None
    return linear_evaluation(nn.Flatten(), data, settings=settings, seed=seed, device=device)


def raw_pixel_semi_supervised(data: EvalData, *, settings: SemiSupervisedSettings | None = None, seed: int = 0,
                              device: torch.device | str = "cpu") -> list[LabelFractionScore] | None:
    """:func:`~supernet.evaluation.semi.semi_supervised_evaluation` of a linear head on the flattened
    pixels (nothing to fine-tune below it), or None above :data:`RAW_PIXEL_PROBE_MAX_DIM` dimensions."""
    if 3 * data.resolution**2 > RAW_PIXEL_PROBE_MAX_DIM:
        return None
    return semi_supervised_evaluation(nn.Flatten(), data, settings=settings, seed=seed, device=device)
