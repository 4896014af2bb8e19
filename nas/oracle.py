"""The weight-sharing accuracy oracle: a sub-network's accuracy without training it.

For a config (Once-for-All; US-Nets): extract its weights from the supernet, recalibrate BatchNorm on
a fixed calibration subset (default 2,000 training images, fixed seed), embed a labeled bank and a
validation split, and score by weighted kNN (cosine, k = 20, T = 0.07). Deterministic for a seed;
results are cached per config.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import SubnetConfig
from supernet.bn import recalibrate_bn
from supernet.evaluation import EvalData, knn_score
from supernet.models import SuperNet


class Oracle:
    """kNN accuracy of sub-networks of one supernet, on fixed evaluation data.

    >>> oracle = Oracle(supernet, eval_data)          # doctest: +SKIP
    >>> oracle.accuracy(space.uniform_config(0.5))    # doctest: +SKIP
    0.8123
    """

    def __init__(
        self,
        supernet: SuperNet,
        data: EvalData,
        *,
        k: int = 20,
        temperature: float = 0.07,
        batch_size: int = 256,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.supernet = supernet.eval()
        self.data = data
        self.k, self.temperature, self.batch_size, self.seed = k, temperature, batch_size, seed
        self.device = torch.device(device)
        self._cache: dict[SubnetConfig, float] = {}

    def recalibrate(self, network: nn.Module) -> nn.Module:
        """Re-estimate ``network``'s BatchNorm statistics on all calibration images (in place)."""
        return recalibrate_bn(network, self.data.calibration, len(self.data.calibration), batch_size=self.batch_size,
                              seed=self.seed, device=self.device)

    def subnet(self, cfg: SubnetConfig) -> SuperNet:
        """The extracted sub-network with BatchNorm recalibrated on the calibration images."""
        network = self.supernet.extract(cfg).to(self.device)
        self.recalibrate(network)
        return network

    def score(self, network: nn.Module) -> float:
        """kNN top-1 in [0, 1] of a (recalibrated) network on the validation split."""
        return knn_score(network, self.data, k=self.k, temperature=self.temperature, batch_size=self.batch_size,
                         device=self.device)

    def accuracy(self, cfg: SubnetConfig, network: nn.Module | None = None) -> float:
        """Cached kNN accuracy of ``cfg``; pass its recalibrated ``network`` if already built."""
        if cfg not in self._cache:
            self._cache[cfg] = self.score(network if network is not None else self.subnet(cfg))
        return self._cache[cfg]

    def remember(self, cfg: SubnetConfig, accuracy: float) -> None:
        """Seed the cache (e.g. from a resumed study's finished trials)."""
        self._cache[cfg] = accuracy
