"""SlimCLR's switchable linear probe: one linear head per width of one frozen supernet, trained jointly.

SlimCLR (Zhao et al. 2023; ``main_ssl_lincls.py``, ``train_epoch_slim``, ``--slim_fc
supervised_switch``) evaluates a slimmable network at its widths 1.0 / 0.75 / 0.5 / 0.25 at once:
each step runs the frozen network at every width on the same (augmented) batch, each width has its
own linear head, and the heads' losses are summed (the narrower heads also distilled from the widest,
``--inplace_distill_mixed``). It reports top-1 per width. Here each width is the supernet's uniform
sub-network, extracted and BatchNorm-recalibrated as the oracle does (a shared running mean cannot
hold every width's statistics at once), so a width's features are exactly the supernet's at
``set_active`` of that config with its own statistics. Hyper-parameters:
:class:`~supernet.evaluation.settings.SwitchableProbeSettings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from search_spaces import SubnetConfig
from supernet.evaluation.data import EvalData
from supernet.evaluation.protocols import fit_heads, scaled_lr, score_heads
from supernet.evaluation.settings import SwitchableProbeSettings
from supernet.nn.bn import recalibrate_bn
from supernet.nn.models import SuperNet

__all__ = ["switchable_linear_probe", "width_label", "width_networks"]


def width_label(width: float) -> str:
    """The key a width's head and score go by: ``1.0``, ``0.75``, ``0.5``, ``0.25``."""
    return f"{float(width):g}" if float(width) != 1.0 else "1.0"


def _uniform_config(supernet: SuperNet, width: float, resolution: int) -> SubnetConfig:
    """Every layer of ``supernet``'s space at the width choice nearest ``width`` times its maximum, gates off."""
    cfg = supernet.space.uniform_config(width)
    return SubnetConfig(cfg.space, dict(cfg.channels), None, resolution)


def width_networks(
    supernet: SuperNet,
    widths: Sequence[float],
    data: EvalData,
    *,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, SuperNet]:
    """The uniform sub-networks of ``supernet`` at ``widths``, widest first, each extracted and with
    BatchNorm recalibrated on all of ``data.calibration`` (the oracle's recalibration), eval mode."""
    networks = {}
    for width in sorted(widths, reverse=True):
        network = supernet.extract(_uniform_config(supernet, width, data.resolution)).to(device)
        recalibrate_bn(network, data.calibration, len(data.calibration), batch_size=batch_size, seed=seed,
                       device=device)
        networks[width_label(width)] = network.eval()
    return networks


def switchable_linear_probe(
    networks: Mapping[str, nn.Module],
    data: EvalData,
    *,
    settings: SwitchableProbeSettings | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Top-1 in [0, 1] on ``data.val`` per width: the frozen ``networks`` (by width label, widest
    first; :func:`width_networks`) each get a linear head, trained jointly on ``data.bank``."""
    settings = settings or SwitchableProbeSettings()
    heads = fit_heads(networks, data.bank, data.bank_labels, num_classes=data.num_classes, epochs=settings.epochs,
                      batch_size=settings.batch_size, lr=scaled_lr(settings.base_lr, settings.batch_size),
                      momentum=settings.momentum, nesterov=settings.nesterov, weight_decay=settings.weight_decay,
                      head_norm=settings.head_norm, augment=settings.augment,
                      crop_scale=(float(settings.crop_scale[0]), float(settings.crop_scale[1])), flip=settings.flip,
                      distill=settings.distill, seed=seed, device=device)
    return score_heads(networks, heads, data.val, data.val_labels, batch_size=settings.batch_size, device=device)
