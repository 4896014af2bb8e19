"""The weight-sharing accuracy oracle: a sub-network's accuracy without training it.

For a config (Once-for-All; US-Nets): extract its weights from the supernet, recalibrate BatchNorm on
a fixed calibration subset (default 2,000 training images, fixed seed), embed a labeled bank and a
validation split, and score by weighted kNN (cosine, k = 20, T = 0.07). Deterministic for a seed;
results are cached per config.

A routed config (width routers, :mod:`supernet.nn.routing`) is a set of static sub-networks, its routes, and
each validation image runs one of them: it is scored by the kNN of its route, the bank embedded by that
route's network (as a slimmable network is read out with one head per width; SlimCLR's switchable probe).
Bank embeddings are cached per static config, so the routes many routed candidates share are embedded once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from nas.settings import DataOverrides
from search_spaces import SubnetConfig
from supernet.data.datasets import load_image_data
from search_spaces import UserError
from supernet.evaluation import EvalData, prepare_eval_data
from supernet.evaluation.knn import embed_tensor, knn_predict, raw_pixel_knn
from supernet.evaluation.settings import KnnSettings
from supernet.evaluation.baselines import untrained_network
from supernet.nn.bn import recalibrate_bn
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet
from supernet.nn.routing import RoutedNetwork, RouterSet

BANK_CACHE_SIZE = 64  # bank embeddings kept (5,000 x 512 floats: 10 MB each)


class RoutingUnavailable(UserError):
    """A routed config asked of a supernet whose checkpoint holds no routers."""


@dataclass(frozen=True)
class RouteShare:
    """One route of a routed config as its validation images took it."""

    levels: tuple[int, ...]  # level index per router
    multipliers: tuple[float, ...]  # the width multiplier of each level
    images: int  # validation images routed here
    fraction: float  # of all validation images
    accuracy: float  # kNN top-1 on them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RoutedScore:
    accuracy: float
    routes: tuple[RouteShare, ...]


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
        routers: RouterSet | None = None,
        untrained: Callable[[], nn.Module] | None = None,
    ) -> None:
        """``untrained``: builds the full network at the weights training started from (for :meth:`references`)."""
        self.supernet = supernet.eval()
        self.untrained = untrained
        self._references: dict[str, float] | None = None
        self.data = data
        self.k, self.temperature, self.batch_size, self.seed = k, temperature, batch_size, seed
        self.device = torch.device(device)
        self.routers = routers
        self._cache: dict[SubnetConfig, float] = {}
        self._routes: dict[SubnetConfig, RoutedScore] = {}
        self._banks: OrderedDict[str, torch.Tensor] = OrderedDict()

    def recalibrate(self, network: nn.Module) -> nn.Module:
        """Re-estimate ``network``'s BatchNorm statistics on all calibration images (in place)."""
        return recalibrate_bn(network, self.data.calibration, len(self.data.calibration), batch_size=self.batch_size,
                              seed=self.seed, device=self.device)

    def subnet(self, cfg: SubnetConfig) -> SuperNet:
        """The extracted sub-network with BatchNorm recalibrated on the calibration images."""
        network = self.supernet.extract(cfg).to(self.device)
        self.recalibrate(network)
        return network

    def routed_network(self, cfg: SubnetConfig) -> RoutedNetwork:
        """The routed network of ``cfg`` with every route's BatchNorm recalibrated on the calibration images."""
        if self.routers is None:
            raise RoutingUnavailable("route_thresholds: this checkpoint has no width routers; train them with "
                                     "python -m supernet.route --checkpoint <checkpoint.pt> (or routing.enabled=true)")
        network = RoutedNetwork.build(self.supernet, self.routers, cfg).to(self.device)
        return network.recalibrate(self.data.calibration, batch_size=self.batch_size, seed=self.seed, device=self.device)

    def score(self, network: nn.Module, cfg: SubnetConfig | None = None) -> float:
        """kNN top-1 in [0, 1] of a (recalibrated) static network on the validation split; with ``cfg`` its bank
        embedding is cached for routes that share it."""
        embed = lambda images: embed_tensor(network, images, batch_size=self.batch_size, device=self.device)  # noqa: E731
        bank = self.bank_features(cfg, embed) if cfg is not None else embed(self.data.bank)
        return self._knn_accuracy(bank, embed(self.data.val), self.data.val_labels)

    def accuracy(self, cfg: SubnetConfig, network: nn.Module | None = None) -> float:
        """Cached kNN accuracy of ``cfg``; pass its recalibrated ``network`` (static or routed) if already built."""
        if cfg not in self._cache:
            if cfg.routed:
                routed = network if isinstance(network, RoutedNetwork) else self.routed_network(cfg)
                self._cache[cfg] = self.routed_score(cfg, routed).accuracy
            else:
                self._cache[cfg] = self.score(network if network is not None else self.subnet(cfg), cfg)
        return self._cache[cfg]

    def routed_score(self, cfg: SubnetConfig, network: RoutedNetwork) -> RoutedScore:
        """Accuracy of a routed network (each validation image scored by its route's kNN) and its routes' shares."""
        if cfg in self._routes:
            return self._routes[cfg]
        features, levels = [], []
        with torch.no_grad():
            network.eval()
            for start in range(0, len(self.data.val), self.batch_size):
                features.append(network(self.data.val[start : start + self.batch_size].to(self.device)).float().cpu())
                levels.append(network.last_levels.cpu())  # type: ignore[union-attr]
        val, routes = torch.cat(features), torch.cat(levels)
        correct = torch.zeros(len(val), dtype=torch.bool)
        shares = []
        for route in sorted({tuple(row) for row in routes.tolist()}):
            rows = (routes == torch.tensor(route)).all(dim=1)
            route_cfg = network.route_config(route)
            bank = self.bank_features(route_cfg, lambda images, route=route: torch.cat([
                network.route_features(images[s : s + self.batch_size].to(self.device), route).float().cpu()
                for s in range(0, len(images), self.batch_size)]))
            predicted = knn_predict(bank, self.data.bank_labels, val[rows][:, : bank.shape[1]],
                                    num_classes=self.data.num_classes, k=self.k, temperature=self.temperature)
            hits = predicted == self.data.val_labels[rows]
            correct[rows] = hits
            shares.append(RouteShare(route, tuple(network.levels[level] for level in route), int(rows.sum()),
                                     float(rows.float().mean()), float(hits.float().mean())))
        score = RoutedScore(float(correct.float().mean()), tuple(shares))
        self._routes[cfg] = score
        return score

    def bank_features(self, cfg: SubnetConfig | None, embed: Callable[[Any], torch.Tensor]) -> torch.Tensor:
        """The bank's features (N, D) by the recalibrated static network of ``cfg`` (``embed(images)``), cached
        per config (a static config fixes the network and its recalibration)."""
        if cfg is None:
            return embed(self.data.bank)
        key = cfg.key()
        if key in self._banks:
            self._banks.move_to_end(key)
            return self._banks[key]
        with torch.no_grad():
            bank = embed(self.data.bank)
        self._banks[key] = bank
        while len(self._banks) > BANK_CACHE_SIZE:
            self._banks.popitem(last=False)
        return bank

    def references(self) -> dict[str, float]:
        """What every score reads against, on the same images and kNN: raw pixels, and the full network at the
        weights training started from (BatchNorm recalibrated the same way), when known. Computed once."""
        if self._references is None:
            references = {"raw_pixels": raw_pixel_knn(self.data, k=self.k, temperature=self.temperature)}
            if self.untrained is not None:
                references["untrained_full"] = self.score(self.recalibrate(self.untrained().to(self.device).eval()))
            self._references = references
        return self._references

    def _knn_accuracy(self, bank: torch.Tensor, val: torch.Tensor, labels: torch.Tensor) -> float:
        predicted = knn_predict(bank, self.data.bank_labels, val, num_classes=self.data.num_classes, k=self.k,
                                temperature=self.temperature)
        return float((predicted == labels.to(predicted.device)).float().mean())

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


def routers_of(payload: Mapping[str, Any], supernet: SuperNet) -> RouterSet | None:
    """The width routers a checkpoint holds (``python -m supernet.route``), or None."""
    record = payload.get("routers")
    return None if record is None else RouterSet.from_record(supernet.space, record).eval()


def build_oracle(supernet: SuperNet, payload: Mapping[str, Any], data: DataOverrides, oracle: KnnSettings,
                 device: torch.device | str) -> Oracle:
    """The oracle ``nas.search`` scores with, for a supernet loaded from checkpoint ``payload``."""
    eval_data = build_eval_data(trained_data_settings(payload), data, oracle,
                                default_resolution=supernet.space.default_resolution)
    routers = routers_of(payload, supernet)
    seed = int(payload.get("config", {}).get("seed", 0))
    options = GateOptions(**payload.get("gate_options", {}))

    def untrained() -> nn.Module:
        return untrained_network(supernet.space.max_config(), seed=seed, with_gates=supernet.with_gates, gate_options=options)

    return Oracle(supernet, eval_data, k=oracle.k, temperature=oracle.temperature, batch_size=oracle.batch_size,
                  seed=oracle.seed, device=device, routers=None if routers is None else routers.to(device),
                  untrained=untrained)
