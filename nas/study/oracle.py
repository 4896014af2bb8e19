"""The weight-sharing accuracy oracle: a sub-network's accuracy without training it.

For a config (Once-for-All; US-Nets): extract its weights from the supernet, recalibrate BatchNorm on
a fixed calibration subset (default 2,000 training images, fixed seed), embed a labeled bank and a
validation split, and score by weighted kNN (cosine, k = 20, T = 0.07): top-1, or a finer score from
the same features (``oracle.score``, :mod:`supernet.evaluation.scores`: the kNN's log-likelihood of the
true class, a logistic-regression probe fitted on the bank, agreement with the full network). The
validation split is labelled training images (``oracle.val_split``) chosen once by ``oracle.val_seed``, the bank
and calibration images drawn by ``oracle.seed`` from the others: the held-out split is left to judge the oracle.
Deterministic for the seeds; results are cached per config.

A routed config (width routers, :mod:`supernet.nn.routing`) is a set of static sub-networks, its routes, and
each validation image runs one of them: it is scored by the kNN of its route, the bank embedded by that
route's network (as a slimmable network is read out with one head per width; SlimCLR's switchable probe).
Bank embeddings are cached per static config, so the routes many routed candidates share are embedded once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from nas.settings import DataOverrides
from search_spaces import SubnetConfig
from supernet.data.datasets import load_image_data
from search_spaces import UserError
from supernet.evaluation import EvalData, prepare_eval_data
from supernet.evaluation.knn import embed_tensor, raw_pixel_knn
from supernet.evaluation.scores import (
    DEFAULT_SCORE,
    KNN_SCORES,
    PROBE_SCORES,
    SCORE_KINDS,
    ImageScores,
    knn_image_scores,
    knn_summary,
    linear_cka,
    probe_image_scores,
    probe_summary,
)
from supernet.evaluation.settings import OracleScore, OracleSettings, ValSplit
from supernet.evaluation.baselines import untrained_network
from supernet.nn.bn import recalibrate_bn
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet
from supernet.nn.routing import RoutedNetwork, RouterSet

BANK_CACHE_BYTES = 1 << 30  # bank embeddings kept, newest first, up to 1 GiB (20,000 x 512 floats: 41 MB each)
VALIDATION_CACHE_SIZE = 4  # validation embeddings kept: a config's scores asked one after another embed it once


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


@dataclass(frozen=True)
class _Embedded:
    """A network's validation features (Q, D) and, for a routed network, each image's route (Q, routers)."""

    features: torch.Tensor
    routes: torch.Tensor | None = None


class Oracle:
    """Scores of sub-networks of one supernet, on fixed evaluation data.

    :meth:`accuracy` is kNN top-1; :meth:`score_of` the kind the search ranks by (``oracle.score``), and
    :meth:`scores_of` any of :data:`~supernet.evaluation.scores.SCORE_KINDS` from one embedding of the bank
    and validation images; :meth:`image_scores` the per-image pieces (right or wrong, probability and
    log-likelihood of the true class) of the kNN or the probe, for a static or a routed config alike.

    >>> oracle = Oracle(supernet, eval_data)          # doctest: +SKIP
    >>> oracle.accuracy(space.uniform_config(0.5))    # doctest: +SKIP
    0.8123
    >>> oracle.score_of(space.uniform_config(0.5))    # doctest: +SKIP  (probe_top1, the default)
    0.8430
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
        score: str = DEFAULT_SCORE,
        probe_epochs: int = 100,
        probe_weight_decay: float = 1e-4,
    ) -> None:
        """``untrained``: builds the full network at the weights training started from (for :meth:`references`);
        ``score``: the kind :meth:`score_of` returns; ``probe_epochs``, ``probe_weight_decay``: the probe of the
        ``probe_*`` kinds (fitted on the bank with ``seed``)."""
        if score not in SCORE_KINDS:
            raise ValueError(f"Oracle: score={score!r}; expected one of {', '.join(SCORE_KINDS)}")
        self.supernet = supernet.eval()
        self.untrained = untrained
        self._references: dict[str, float] | None = None
        self.data = data
        self.k, self.temperature, self.batch_size, self.seed = k, temperature, batch_size, seed
        self.score_kind, self.probe_epochs, self.probe_weight_decay = score, probe_epochs, probe_weight_decay
        self.device = torch.device(device)
        self.routers = routers
        self._cache: dict[SubnetConfig, float] = {}
        self._values: dict[tuple[SubnetConfig, str], float] = {}
        self._routes: dict[SubnetConfig, RoutedScore] = {}
        self._banks: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._embedded: OrderedDict[str, _Embedded] = OrderedDict()
        self._full: torch.Tensor | None = None

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
        embed = self._embedder(network)
        bank = self.bank_features(cfg, embed)
        return knn_summary(self._classify("knn", bank, embed(self.data.val), self.data.val_labels))["knn_top1"]

    def accuracy(self, cfg: SubnetConfig, network: nn.Module | None = None) -> float:
        """Cached kNN accuracy of ``cfg``; pass its recalibrated ``network`` (static or routed) if already built."""
        if cfg not in self._cache:
            self._cache[cfg] = self.scores_of(cfg, network, kinds=("knn_top1",))["knn_top1"]
        return self._cache[cfg]

    def score_of(self, cfg: SubnetConfig, network: nn.Module | None = None) -> float:
        """The score the search ranks by (``oracle.score``, :attr:`score_kind`; higher is better), cached per config;
        pass its recalibrated ``network`` (static or routed) if already built."""
        return self.scores_of(cfg, network, kinds=(self.score_kind,))[self.score_kind]

    def scores_of(self, cfg: SubnetConfig, network: nn.Module | None = None, *,
                  kinds: Sequence[str] = SCORE_KINDS) -> dict[str, float]:
        """``{kind: score}`` of ``cfg`` (:mod:`supernet.evaluation.scores`), cached per config and kind; the kinds
        not cached yet are measured together, from one embedding of the validation images."""
        unknown = [kind for kind in kinds if kind not in SCORE_KINDS]
        if unknown:
            raise ValueError(f"Oracle.scores_of: unknown score {unknown[0]!r}; expected one of {', '.join(SCORE_KINDS)}")
        missing = [kind for kind in kinds if (cfg, kind) not in self._values]
        if missing:
            if network is None and not self._embeddings_cached(cfg):
                network = self._network(cfg, None)
            measured = self._measure(cfg, network, missing)
            self._values.update({(cfg, kind): value for kind, value in measured.items()})
        return {kind: self._values[(cfg, kind)] for kind in kinds}

    def network_scores(self, network: nn.Module, *, kinds: Sequence[str] = SCORE_KINDS) -> dict[str, float]:
        """``{kind: score}`` of any recalibrated static network on the same images (the untrained twin of a config,
        a network trained on its own), nothing cached."""
        unknown = [kind for kind in kinds if kind not in SCORE_KINDS]
        if unknown:
            raise ValueError(f"Oracle.network_scores: unknown score {unknown[0]!r}; expected one of {', '.join(SCORE_KINDS)}")
        measured = self._measure(None, network, kinds)
        return {kind: measured[kind] for kind in kinds}

    def image_scores(self, cfg: SubnetConfig | None, network: nn.Module | None, *, classifier: str = "knn") -> ImageScores:
        """The answer of the kNN (``classifier="knn"``) or the logistic-regression probe fitted on the bank
        (``"probe"``) on each validation image of the recalibrated ``network`` of ``cfg``: right or wrong,
        probability and log-likelihood of the true class, each (Q,). A routed network's images are each
        answered by their route's classifier, its bank embedded by that route's static network. With ``cfg``
        None (a static network only) nothing is cached; ``network`` None: ``cfg``'s network, built if its
        features are not cached."""
        if network is None and (cfg is None or not self._embeddings_cached(cfg)):
            if cfg is None:
                raise ValueError("Oracle.image_scores: give a network or a config")
            network = self._network(cfg, None)
        embedded = self._embed(cfg, network)
        labels = self.data.val_labels
        if embedded.routes is None:
            return self._classify(classifier, self.bank_features(cfg, self._embedder(network)), embedded.features, labels)
        assert isinstance(network, RoutedNetwork)
        parts, shares = [], []
        for route in sorted({tuple(row) for row in embedded.routes.tolist()}):
            rows = (embedded.routes == torch.tensor(route)).all(dim=1)
            bank = self.bank_features(network.route_config(route), lambda images, route=route: torch.cat([
                network.route_features(images[s : s + self.batch_size].to(self.device), route).float().cpu()
                for s in range(0, len(images), self.batch_size)]))
            part = self._classify(classifier, bank, embedded.features[rows][:, : bank.shape[1]], labels[rows])
            parts.append((rows, part))
            shares.append(RouteShare(route, tuple(network.levels[level] for level in route), int(rows.sum()),
                                     float(rows.float().mean()), float(part.correct.double().mean())))
        scores = ImageScores.scatter(parts, len(labels))
        if classifier == "knn":
            self._routes[cfg] = RoutedScore(float(scores.correct.double().mean()), tuple(shares))
        return scores

    def routed_score(self, cfg: SubnetConfig, network: RoutedNetwork) -> RoutedScore:
        """Accuracy of a routed network (each validation image scored by its route's kNN) and its routes' shares."""
        if cfg not in self._routes:
            self.image_scores(cfg, network, classifier="knn")
        return self._routes[cfg]

    def full_features(self) -> torch.Tensor:
        """The full network's validation features (Q, D), BatchNorm recalibrated as every candidate's: what the
        label-free ``agreement`` score compares with. Computed once."""
        if self._full is None:
            full = self.supernet.space.max_config()
            full = SubnetConfig(full.space, dict(full.channels), None, self.data.resolution)
            self._full = self._embedder(self.subnet(full))(self.data.val)
        return self._full

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
        while len(self._banks) > 1 and sum(kept.nbytes for kept in self._banks.values()) > BANK_CACHE_BYTES:
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

    def forget(self) -> None:
        """Drop every cached score and embedding (a benchmark timing a cold evaluation)."""
        for cache in (self._cache, self._values, self._routes, self._banks, self._embedded):
            cache.clear()
        self._full = None

    def remember(self, cfg: SubnetConfig, accuracy: float, scores: Mapping[str, float] | None = None) -> None:
        """Seed the cache (e.g. from a resumed study's finished trials): kNN top-1 and any ``{kind: score}``."""
        self._cache[cfg] = accuracy
        self._values.update({(cfg, kind): float(value) for kind, value in (scores or {}).items()})

    # -- pieces ------------------------------------------------------------------------------------------
    def _network(self, cfg: SubnetConfig, network: nn.Module | None) -> nn.Module:
        if cfg.routed:
            return network if isinstance(network, RoutedNetwork) else self.routed_network(cfg)
        return network if network is not None else self.subnet(cfg)

    def _embeddings_cached(self, cfg: SubnetConfig) -> bool:
        """A static config whose validation and bank features are both still cached: scoring it needs no network."""
        return not cfg.routed and cfg.key() in self._embedded and cfg.key() in self._banks

    def _embedder(self, network: nn.Module | None) -> Callable[[Any], torch.Tensor]:
        return lambda images: embed_tensor(network, images, batch_size=self.batch_size, device=self.device)

    def _measure(self, cfg: SubnetConfig | None, network: nn.Module | None, kinds: Sequence[str]) -> dict[str, float]:
        """Every kind of a family that ``kinds`` names (a kNN pass gives all three kNN kinds, a probe both)."""
        measured: dict[str, float] = {}
        if any(kind in KNN_SCORES for kind in kinds):
            measured.update(knn_summary(self.image_scores(cfg, network, classifier="knn")))
        if any(kind in PROBE_SCORES for kind in kinds):
            measured.update(probe_summary(self.image_scores(cfg, network, classifier="probe")))
        if "agreement" in kinds:
            measured["agreement"] = linear_cka(self._embed(cfg, network).features, self.full_features())
        return measured

    def _embed(self, cfg: SubnetConfig | None, network: nn.Module | None) -> _Embedded:
        """The validation features of ``cfg``'s network (and each image's route), kept for the last few configs."""
        key = None if cfg is None else cfg.key()
        if key in self._embedded:
            self._embedded.move_to_end(key)
            return self._embedded[key]
        if network is None:
            assert cfg is not None, "an uncached embedding needs a network or a config"
            network = self._network(cfg, None)
        if isinstance(network, RoutedNetwork):
            features, levels = [], []
            with torch.no_grad():
                network.eval()
                for start in range(0, len(self.data.val), self.batch_size):
                    features.append(network(self.data.val[start : start + self.batch_size].to(self.device)).float().cpu())
                    levels.append(network.last_levels.cpu())  # type: ignore[union-attr]
            embedded = _Embedded(torch.cat(features), torch.cat(levels))
        else:
            embedded = _Embedded(self._embedder(network)(self.data.val))
        if key is None:
            return embedded
        self._embedded[key] = embedded
        while len(self._embedded) > VALIDATION_CACHE_SIZE:
            self._embedded.popitem(last=False)
        return embedded

    def _classify(self, classifier: str, bank: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> ImageScores:
        if classifier == "knn":
            return knn_image_scores(bank, self.data.bank_labels, features, labels, num_classes=self.data.num_classes,
                                    k=self.k, temperature=self.temperature)
        if classifier == "probe":
            return probe_image_scores(bank.to(self.device), self.data.bank_labels, features.to(self.device), labels,
                                      num_classes=self.data.num_classes, epochs=self.probe_epochs,
                                      weight_decay=self.probe_weight_decay, seed=self.seed)
        raise ValueError(f"Oracle: classifier={classifier!r}; expected knn or probe")


# -- building the oracle of a checkpoint ----------------------------------------------------------
def trained_data_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The data settings a checkpoint was trained with (its ``config.data``) plus its ``seed``."""
    config = payload.get("config", {})
    return {**config.get("data", {}), "seed": int(config.get("seed", 0))}


def build_eval_data(trained: Mapping[str, Any], data: DataOverrides, oracle: OracleSettings, *,
                    default_resolution: int) -> EvalData:
    """Calibration, bank and validation images as the search draws them.

    ``trained``: :func:`trained_data_settings` of the checkpoint, which ``data`` overrides where
    set; ``oracle`` sizes and seeds the splits and says where the validation images come from
    (``oracle.val_split``: labelled training images outside the bank by default, never the held-out
    split that judges the oracle). The resolution is the one the supernet was trained at.
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
                             val_size=oracle.val_size, seed=oracle.seed, val_split=ValSplit(oracle.val_split).value,
                             val_seed=oracle.val_seed)


def judging_settings(oracle: OracleSettings, *, train_images: int | None = None) -> OracleSettings:
    """``oracle`` drawing its validation images from the whole held-out split (the test split, else the holdout):
    what judges a network, not what selects one (``nas.evaluate``, the fidelity benchmark). ``train_images``:
    labelled training images in the bank (a probe's training set); None keeps ``oracle.bank_size``."""
    return replace(oracle, val_split=ValSplit.heldout, val_size=None,
                   bank_size=oracle.bank_size if train_images is None else train_images)


def routers_of(payload: Mapping[str, Any], supernet: SuperNet) -> RouterSet | None:
    """The width routers a checkpoint holds (``python -m supernet.route``), or None."""
    record = payload.get("routers")
    return None if record is None else RouterSet.from_record(supernet.space, record).eval()


def build_oracle(supernet: SuperNet, payload: Mapping[str, Any], data: DataOverrides, oracle: OracleSettings,
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
                  untrained=untrained, score=OracleScore(oracle.score).value, probe_epochs=oracle.probe_epochs,
                  probe_weight_decay=oracle.probe_weight_decay)
