"""The weight-sharing accuracy oracle: a sub-network's accuracy without training it.

For a config (Once-for-All; US-Nets): extract its weights from the supernet, recalibrate BatchNorm on
a fixed calibration subset (default 2,000 training images, fixed seed), embed a labeled bank and a
validation split, and score by weighted kNN (cosine, k = 20, T = 0.07). Deterministic for a seed;
results are cached per config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nas.settings import DataOverrides
from search_spaces import SubnetConfig
from supernet.data.datasets import load_image_data
from supernet.evaluation import EvalData, knn_score, prepare_eval_data
from supernet.evaluation.settings import KnnSettings
from supernet.nn.bn import recalibrate_bn
from supernet.nn.models import SuperNet


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


# -- building the oracle of a checkpoint ----------------------------------------------------------
def trained_data_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings a checkpoint was trained with (its ``config.data``) plus its ``seed``."""
    config = payload.get("config", {})
    return {**config.get("data", {}), "seed": int(config.get("seed", 0))}


def build_eval_data(trained: Mapping[str, Any], data: DataOverrides, oracle: KnnSettings, *,
                    default_resolution: int) -> EvalData:
    """Calibration, bank and validation images as the search draws them.

    ``trained``: :func:`trained_data_settings` of the checkpoint, which ``data`` overrides where
    set; ``oracle`` sizes and seeds the splits. The resolution is the one the supernet was trained at.
    """
    def setting(key: str, default: Any) -> Any:  # the override where set, else what training used
        value = getattr(data, key)
        return value if value is not None else trained.get(key, default)

    images = load_image_data(
        setting("name", "mnist_embedded"), root=setting("root", None), max_images=trained.get("max_images"),
        holdout_size=setting("holdout_size", 1000), download=data.download, seed=int(trained.get("seed", 0)),
        test_root=setting("test_root", None), official_test=bool(setting("official_test", False)),
    )
    return prepare_eval_data(images, resolution=int(trained.get("resolution", default_resolution)),
                             calibration_images=oracle.calibration_images, bank_size=oracle.bank_size,
                             val_size=oracle.val_size, seed=oracle.seed)


def build_oracle(supernet: SuperNet, payload: Mapping[str, Any], data: DataOverrides, oracle: KnnSettings,
                 device: torch.device | str) -> Oracle:
    """The oracle ``nas.search`` scores with, for a supernet loaded from checkpoint ``payload``."""
    eval_data = build_eval_data(trained_data_settings(payload), data, oracle,
                                default_resolution=supernet.space.default_resolution)
    return Oracle(supernet, eval_data, k=oracle.k, temperature=oracle.temperature, batch_size=oracle.batch_size,
                  seed=oracle.seed, device=device)
