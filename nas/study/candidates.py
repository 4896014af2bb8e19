"""Scoring one candidate sub-network: its costs first, its accuracy only if it fits the budgets.

Candidates are of three kinds (``SubnetConfig.kind``): static widths, Krishna et al.'s channel gates
(``gate_thresholds``) and width routing (``route_thresholds``, :mod:`supernet.nn.routing`). Costs (cached per
config with the result): fvcore FLOPs of the extracted network (one multiply-add = one flop; gates counted
with every channel kept; a routed network's widest route with its routers), effective FLOPs (mean over
calibration images of the per-input FLOPs), parameters, and latency measured as the network
would be deployed (runtime, precision and batch of :class:`nas.latency.plan.LatencyPlan`; or predicted by a
latency table, :mod:`nas.latency.table`, with nothing timed). A candidate
over a budget never pays for the kNN evaluation, and a static one not for BN recalibration: a gated or routed
candidate decides per input only once its BatchNorm is recalibrated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import torch

from nas.cost import Costs, count_flops, measure_costs
from nas.latency.plan import LatencyPlan, space_anchor
from nas.latency.table import LatencyPredictor
from nas.settings import LatencySettings
from nas.study.oracle import Oracle
from search_spaces import ConfigError, SearchSpace, SubnetConfig
from supernet.nn.models import SuperNet
from supernet.nn.routing import RoutedNetwork


@dataclass
class CandidateResult:
    """Everything measured for one config; ``accuracy`` is None when a budget ruled it out first."""

    config: dict[str, Any]
    flops: int  # static (gates counted, every channel kept)
    effective_flops: float  # mean per input with gates on; equals flops when gates are off
    params: int
    latency: dict[str, Any] | None = None  # nas.latency.measure.Latency.to_dict() at latency.batch_size: the objective
    # Scored candidates: latency at batch 1 and at latency.batch_size ("1", "B"); for a gated one also the
    # same widths without gates, so the output can say whether the gates saved time at each batch.
    latency_by_batch: dict[str, dict[str, Any]] | None = None
    static_latency_by_batch: dict[str, dict[str, Any]] | None = None
    accuracy: float | None = None  # kNN top-1 on the oracle's validation images
    violations: dict[str, float] = field(default_factory=dict)  # cost - budget per budget; <= 0 is feasible
    routes: list[dict[str, Any]] | None = None  # routed: each route's share of the validation images and its kNN
    score: float | None = None  # what the search ranks by (oracle.score; higher is better), with accuracy
    score_kind: str | None = None

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.violations.values())

    def cost(self, objective: str) -> float:
        if objective == "latency":
            assert self.latency is not None
            return float(self.latency["seconds"])
        return float(self.effective_flops)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CandidateResult:
        """The result stored in a trial (extra keys such as ``trial`` are ignored)."""
        return cls(**{name: record[name] for name in cls.__dataclass_fields__ if name in record})


class CandidateEvaluator:
    """Measures candidates of one supernet against FLOP and/or latency budgets (either may be None)."""

    def __init__(
        self,
        supernet: SuperNet,
        oracle: Oracle,
        *,
        flops_budget: float | None,
        latency_budget: float | None,
        latency: LatencySettings,
        effective_flops_images: int = 256,
        device: torch.device | str = "cpu",
        latency_predictor: LatencyPredictor | None = None,
    ) -> None:
        self.supernet, self.oracle = supernet, oracle
        self.flops_budget, self.latency_budget = flops_budget, latency_budget
        self.latency_settings = latency
        self.effective_flops_images = effective_flops_images
        self.device = torch.device(device)
        self.latency_predictor = latency_predictor  # None: latency is measured on the device
        # how networks are timed here (runtime, precision, batch); refused in one line before anything runs
        self.latency_plan = LatencyPlan.from_settings(latency, self.device) if latency_predictor is None else None
        if self.latency_plan is not None and self.latency_plan.anchored:
            self.latency_plan = self.latency_plan.with_anchor(space_anchor(supernet.space, oracle.data.resolution))
        self.resolution = oracle.data.resolution
        # routed candidates are timed, never predicted: a latency table has no routers in it
        self.routing_available = oracle.routers is not None and latency_predictor is None
        self._cache: dict[SubnetConfig, CandidateResult] = {}
        self._static_flops: dict[str, int] = {}

    def forget(self) -> None:
        """Drop every cached result and FLOP count (a benchmark timing a cold evaluation); the latency plan's
        anchor keeps its figure, as it does for the whole of a study."""
        self._cache.clear()
        self._static_flops.clear()

    def static_flops(self, cfg: SubnetConfig) -> int:
        """fvcore FLOPs of ``cfg``'s extracted network at the evaluation resolution (cached)."""
        key = cfg.key()
        if key not in self._static_flops:
            self._static_flops[key] = count_flops(self.supernet.extract(cfg).eval(), self.resolution)
        return self._static_flops[key]

    def remember(self, result: CandidateResult) -> None:
        cfg = SubnetConfig.from_dict(result.config)
        self._cache[cfg] = result
        if result.accuracy is not None:  # the oracle then answers for it without a network
            scores = {result.score_kind: result.score} if result.score_kind is not None and result.score is not None else None
            self.oracle.remember(cfg, result.accuracy, scores=scores)

    def evaluate(self, cfg: SubnetConfig) -> CandidateResult:
        if cfg not in self._cache:
            self._cache[cfg] = self._evaluate(cfg)
        return self._cache[cfg]

    def _evaluate(self, cfg: SubnetConfig) -> CandidateResult:
        network: SuperNet | RoutedNetwork
        if cfg.routed:  # routers decide on recalibrated features
            network = self.oracle.routed_network(cfg)
        else:
            network = self.supernet.extract(cfg).to(self.device).eval()
            if cfg.gated:  # the gates decide per input only once their BatchNorm is recalibrated
                self.oracle.recalibrate(network)
        costs = self.costs(network, cfg)
        result = CandidateResult(cfg.to_dict(), costs.flops, costs.effective_flops, costs.params)
        if self._over("flops", result.effective_flops, result):
            return result
        result.latency = self.measure_latency(network, cfg)  # static networks: BN values do not change the time
        if self._over("latency", result.latency["seconds"], result):
            return result
        if cfg.kind == "static":
            self.oracle.recalibrate(network)
        result.accuracy = self.oracle.accuracy(cfg, network)
        result.score, result.score_kind = self.oracle.score_of(cfg, network), self.oracle.score_kind
        if isinstance(network, RoutedNetwork):
            result.routes = [share.to_dict() for share in self.oracle.routed_score(cfg, network).routes]
        result.latency_by_batch, result.static_latency_by_batch = self.latency_profile(network, cfg, result.latency)
        return result

    def latency_profile(self, network: SuperNet, cfg: SubnetConfig, at_batch: dict[str, Any]
                        ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]] | None]:
        """Latency at batch 1 and at the objective's batch (``at_batch``, already measured), and for a gated
        config the same widths without gates at each, timed beside the gated network.

        Gates can save time only where they run gathered (eager at batch 1: only the kept channels run);
        on every other runtime or batch they run masked, every channel computed, which never saves time.
        A latency table answers for its own batch size only, so with one the other batch is left out.
        """
        batch = int(at_batch["batch_size"])
        by_batch = {str(batch): at_batch}
        if self.latency_predictor is not None:
            sizes: tuple[int, ...] = (batch,)
        else:
            assert self.latency_plan is not None
            sizes = self.latency_plan.batch_sizes
        if cfg.kind == "static":
            for size in sizes:
                if str(size) not in by_batch:
                    by_batch[str(size)] = self.measure_latency(network, cfg, batch_size=size)
            return dict(sorted(by_batch.items(), key=lambda item: int(item[0]))), None
        static_cfg = cfg.static()
        static = self.supernet.extract(static_cfg).to(self.device).eval()
        static_by_batch = {}
        for size in sizes:
            if str(size) in by_batch:  # the objective's figure stands; time the static widths on their own
                static_by_batch[str(size)] = self.measure_latency(static, static_cfg, batch_size=size)
            else:
                gated, plain = self.measure_latencies([(network, cfg), (static, static_cfg)], batch_size=size)
                by_batch[str(size)], static_by_batch[str(size)] = gated, plain
        order = lambda item: int(item[0])  # noqa: E731
        return dict(sorted(by_batch.items(), key=order)), dict(sorted(static_by_batch.items(), key=order))

    def costs(self, network: SuperNet | RoutedNetwork, cfg: SubnetConfig) -> Costs:
        """:func:`nas.cost.measure_costs` on the oracle's calibration images (a route's FLOPs cached per config)."""
        calibration = self.oracle.data.calibration[: self.effective_flops_images]
        return measure_costs(network, cfg, calibration, resolution=self.resolution, batch_size=self.oracle.batch_size,
                             device=self.device, route_flops=self.static_flops)

    def _over(self, kind: str, cost: float, result: CandidateResult) -> bool:
        budget = self.flops_budget if kind == "flops" else self.latency_budget
        if budget is None:
            return False
        result.violations[kind] = float(cost - budget)
        return cost > budget

    def measure_latency(self, network: SuperNet, cfg: SubnetConfig, *, batch_size: int | None = None) -> dict[str, Any]:
        """Latency of ``network`` (``cfg``'s) at ``batch_size`` (default the objective's) as the plan times it: on its
        runtime and precision, over real images; a gated network runs gathered where the runtime allows it
        (eager, batch 1), else masked.

        With a latency predictor, its prediction instead (same dict, method ``"table"``; the table's own batch
        size); the device is not timed.
        """
        if self.latency_predictor is not None:
            images = self.oracle.data.calibration[: self.effective_flops_images]
            return self.latency_predictor.predicted_latency(network, cfg, images, batch_size=self.oracle.batch_size)
        return self.measure_latencies([(network, cfg)], batch_size=batch_size)[0]

    def measure_latencies(self, candidates: Sequence[tuple[SuperNet, SubnetConfig]], *, batch_size: int | None = None
                          ) -> list[dict[str, Any]]:
        """:meth:`measure_latency` of several networks, timed interleaved (side by side in one measurement)."""
        plan = self.latency_plan
        if plan is None:
            raise ValueError("measure_latencies: this evaluator predicts latency from a table; nothing is timed")
        batch = plan.batch_size if batch_size is None else batch_size
        for network, cfg in candidates:
            if cfg.gated:
                network.set_gate_mode(plan.gate_mode(batch))  # type: ignore[arg-type]
        images = self.oracle.data.calibration
        inputs = [images[i : i + batch] for i in range(0, min(len(images), 8 * batch), batch)]
        inputs = [x for x in inputs if x.shape[0] == batch] or [torch.zeros(batch, 3, self.resolution, self.resolution)]
        try:
            measured = plan.measure([network for network, _ in candidates], inputs)
        finally:
            for network, cfg in candidates:
                if cfg.gated:
                    network.set_gate_mode("masked")
        return [latency.to_dict() for latency in measured]

    def config_latencies(self, configs: Sequence[SubnetConfig]) -> list[float]:
        """Seconds of ``configs``' extracted networks at the objective's batch, timed interleaved (or predicted):
        the budget check's smallest and largest networks, measured side by side as candidates are."""
        networks = [self.supernet.extract(cfg).to(self.device).eval() for cfg in configs]
        if self.latency_predictor is not None:
            return [float(self.measure_latency(network, cfg)["seconds"]) for network, cfg in zip(networks, configs)]
        return [float(m["seconds"]) for m in self.measure_latencies(list(zip(networks, configs)))]


# -- Optuna <-> SubnetConfig ----------------------------------------------------------------------
ROUTERS = ("every", "first")  # which routers of a routed candidate decide: each for its group, or one for all


def candidate_kinds(space: SearchSpace, *, gates_available: bool, routing_available: bool = False) -> tuple[str, ...]:
    """The kinds of candidate a search proposes: static always, gated with gates, routed with routers."""
    return ("static", *(("gated",) if gates_available and space.gated_blocks else ()),
            *(("routed",) if routing_available and space.router_blocks else ()))


def suggest_config(
    trial: optuna.Trial, space: SearchSpace, *, gates_available: bool, routing_available: bool = False,
    resolution: int | None = None,
) -> SubnetConfig:
    """A config from the trial: one width per independent decision (ties respected), then its kind.

    Widths are suggested as an ordinal index into the layer's ``width_choices`` (``width.<layer>``)
    so samplers see their order. Static or gated only: ``gates`` switches gates on, then
    ``threshold.<block>`` per block. With routers: ``kind`` (static, gated, routed), then the gates'
    thresholds, or for a routed config ``routers`` (:data:`ROUTERS`: ``every`` router block decides for its
    group, or the ``first`` alone decides for the whole network, one router's cost) and ``route.<router block>``
    per router that decides (how sure it must be before an input takes a narrower slice); the widths are then
    the widest route.
    """
    widths = {}
    for key in space.decisions:
        choices = space.layer(key).width_choices
        widths[key] = choices[trial.suggest_int(f"width.{key}", 0, len(choices) - 1)]
    kinds = candidate_kinds(space, gates_available=gates_available, routing_available=routing_available)
    if "routed" in kinds:
        kind = trial.suggest_categorical("kind", list(kinds))
    else:
        kind = "gated" if len(kinds) > 1 and trial.suggest_categorical("gates", [False, True]) else "static"
    thresholds = routes = None
    if kind == "gated":
        low, high = space.gate_threshold_range
        thresholds = {block.name: trial.suggest_float(f"threshold.{block.name}", low, high) for block in space.gated_blocks}
    elif kind == "routed":
        low, high = space.route_threshold_range
        deciding = space.router_blocks
        if len(deciding) > 1 and trial.suggest_categorical("routers", list(ROUTERS)) == "first":
            deciding = deciding[:1]
        routes = {name: trial.suggest_float(f"route.{name}", low, high) for name in deciding}
    return space.from_decisions(widths, thresholds, resolution, routes)


def config_params(cfg: SubnetConfig, space: SearchSpace, *, gates_available: bool,
                  routing_available: bool = False) -> dict[str, Any]:
    """The trial parameters that :func:`suggest_config` turns into ``cfg`` (for ``enqueue_trial``)."""
    params: dict[str, Any] = {
        f"width.{key}": space.layer(key).width_choices.index(cfg.channels[key]) for key in space.decisions
    }
    kinds = candidate_kinds(space, gates_available=gates_available, routing_available=routing_available)
    if "routed" in kinds:
        params["kind"] = cfg.kind
    elif len(kinds) > 1:
        params["gates"] = cfg.gated
    if cfg.gate_thresholds is not None:
        params.update({f"threshold.{name}": value for name, value in cfg.gate_thresholds.items()})
    if cfg.route_thresholds is not None:
        if len(space.router_blocks) > 1:
            deciding = tuple(name for name in space.router_blocks if name in cfg.route_thresholds)
            if deciding not in (space.router_blocks, space.router_blocks[:1]):
                raise ConfigError(f"route_thresholds: routers {list(deciding)} decide; a search proposes every router "
                                  f"({list(space.router_blocks)}) or the first alone")
            params["routers"] = "every" if deciding == space.router_blocks else "first"
        params.update({f"route.{name}": value for name, value in cfg.route_thresholds.items()})
    return params
