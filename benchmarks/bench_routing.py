"""Width routing on real images (issue 22): does it save measured time, and does it pay on the front?

On a supernet checkpoint that holds width routers (``python -m supernet.route``):

1. ``search``: one ``nas.search`` study (static, channel-gated and routed candidates; latency objective at batch
   1, anchored CPU timing, effective FLOPs recorded too), resumed if it exists;
2. ``judge``: every scored candidate re-scored on the judging split (``--test-root``, e.g. the 10,000 held-out
   CIFAR-10 images), kNN over ``--bank`` training images, beside raw pixels and the untrained full network,
   and each static front member beside its untrained twin;
3. ``fronts``: judged accuracy vs effective FLOPs and vs measured batch-1 latency, each kind marked
   (``routing_fronts.png``), and the target: a routed network that beats every static one of lower or equal
   cost by >= 1 point, or matches the full network's accuracy within 0.3 point at <= 75 % of its cost, on both;
4. ``equal_cost``: the most accurate network of each kind at or below 25 / 50 / 75 / 100 % of the full
   network's cost, one table;
5. ``speed``: up to ``--speed-configs`` routed candidates of each way of routing (every router deciding, the
   first alone), front members first, then the most accurate (or the ``--speed-trials`` given), at batch 1, each
   image timed
   beside the static sub-network of the route it took (eager, one thread, each network in blocks of
   ``--block`` consecutive forwards as a deployed network runs, the two alternating block by block): measured
   / static <= 1.1; at ``--batch`` (256), in the same interleaved rounds, the routed batch beside the widest
   static network, its groups run alone and each route's static network on the whole batch: measured /
   (FLOPs-weighted expectation: the widest route's time x effective FLOPs / its FLOPs) <= 1.2, and the readings
   that say where the time goes (:func:`speed`);
6. ``routers``: each route's share and accuracy, and which classes the routers send narrow.

    python benchmarks/bench_routing.py --checkpoint /work/runs/c10_supernet/checkpoint.pt \\
        --test-root /work/data/cifar10/heldout --trials 80 --out /tmp/bench_routing --json routing.json

``--speed-from routing.json`` re-times (step 5 alone) the routed candidates an earlier run judged, without
searching or judging again: for a quiet machine, or after a change to how routed networks run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from nas.latency.measure import measure_latencies
from nas.settings import load_search_settings
from nas.study.oracle import build_oracle
from nas.study.pareto import kind_of, pareto_front
from nas.study.run import SearchRequest, search
from search_spaces import SubnetConfig, get_space
from supernet.evaluation.baselines import untrained_network
from supernet.evaluation.knn import knn_predict
from supernet.io.checkpoint import load_supernet
from supernet.io.files import atomic_write, atomic_write_text
from supernet.io.provenance import machine_record
from supernet.nn.flops import ShapeFlopCounter
from supernet.nn.gates import GateOptions

SPEED_TARGET_BATCH1 = 1.1
SPEED_TARGET_BATCH = 1.2
BEATS_BY = 0.01  # a routed network beats every static one of lower or equal cost by this much (kNN top-1)
MATCH_WITHIN = 0.003  # or matches the full network's accuracy within this
MATCH_COST = 0.75  # at no more than this share of its cost
COST_SHARES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Judged:
    trial: int
    kind: str
    config: dict[str, Any]
    flops: float
    effective_flops: float
    latency_batch1_s: float
    accuracy: float  # on the judging split
    search_accuracy: float  # the oracle's, during the search
    untrained: float | None = None  # the same (widest) widths untrained, judged alike
    routes: list[dict[str, Any]] | None = None


@dataclass
class Report:
    checkpoint: str
    judge_images: int
    bank_images: int
    raw_pixels: float
    untrained_full: float
    full_accuracy: float
    full_flops: float
    full_latency_batch1_s: float
    judged: list[Judged] = field(default_factory=list)
    fronts: dict[str, list[int]] = field(default_factory=dict)
    pays: dict[str, dict[str, Any]] = field(default_factory=dict)
    equal_cost: list[dict[str, Any]] = field(default_factory=list)
    speed: list[dict[str, Any]] = field(default_factory=list)
    routers: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        speed_ok = bool(self.speed) and all(row["passed"] for row in self.speed)
        return speed_ok and all(entry["passed"] for entry in self.pays.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--test-root", type=Path, required=True, help="the judging split (an ImageFolder tree)")
    parser.add_argument("--out", type=Path, default=None, help="the search study and the figures go here")
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--sampler", default="nsga2")
    parser.add_argument("--bank", type=int, default=10000, help="training images the judging kNN votes with")
    parser.add_argument("--batch", type=int, default=256, help="the larger batch of the speed check")
    parser.add_argument("--speed-configs", type=int, default=3, help="routed candidates timed per way of routing")
    parser.add_argument("--speed-trials", type=int, nargs="+", default=None, metavar="TRIAL",
                        help="time these routed trials instead (e.g. with --speed-from, one that splits its images)")
    parser.add_argument("--speed-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per image at batch 1 (one block each)")
    parser.add_argument("--block", type=int, default=50, help="consecutive forwards of one network per round, batch 1")
    parser.add_argument("--batch-repeats", type=int, default=15, help="timed rounds at --batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-speed", action="store_true", help="leave the timed checks for a run on a quiet machine")
    parser.add_argument("--skip-routers", action="store_true", help="leave out what the routers learned (step 6)")
    parser.add_argument("--speed-from", type=Path, default=None, metavar="JSON",
                        help="only re-time the routed candidates of an earlier run's --json (step 5)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="search settings (configs/search.yaml)")
    return parser.parse_args(argv)


def run_search(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = load_search_settings(["latency.batch_size=1", *args.overrides])
    request = SearchRequest(checkpoint=args.checkpoint, flops_budget=None, latency_budget=None, objective="latency",
                            sampler=args.sampler, trials=args.trials, timeout=None, device="cpu", storage=None,
                            study_name="routing", seed=0, out=args.out / "search", settings=settings, progress=True)
    return search(request).records


def judging_oracle(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any]:
    """The supernet, its checkpoint and the oracle that judges on the held-out images (the oracle's own default,
    oracle.val_split=train, is what the search selects on)."""
    supernet, payload = load_supernet(args.checkpoint)
    supernet.eval()
    settings = load_search_settings([f"data.test_root={args.test_root}", "data.holdout_size=0",
                                     f"oracle.bank_size={args.bank}", "oracle.val_split=heldout", "oracle.val_size=null",
                                     *args.overrides])
    return supernet, payload, build_oracle(supernet, payload, settings.data, settings.oracle, "cpu")


def judge(args: argparse.Namespace, records: list[dict[str, Any]]) -> tuple[Report, Any]:
    supernet, payload, oracle = judging_oracle(args)
    references = oracle.references()
    seed = int(payload["config"]["seed"])
    options = GateOptions(**payload.get("gate_options", {}))
    full = next(r for r in records if r["config"] == _static(supernet.space.max_config(), records))
    report = Report(str(args.checkpoint), len(oracle.data.val), len(oracle.data.bank), references["raw_pixels"],
                    references["untrained_full"], 0.0, float(full["effective_flops"]),
                    float(full["latency_by_batch"]["1"]["seconds"]), machine=machine_record(args.threads))
    cache_path = args.out / "judged.json"  # a re-run (e.g. for the speed check on a quiet machine) judges nothing twice
    cached = {row["trial"]: row for row in json.loads(cache_path.read_text())} if cache_path.is_file() else {}
    for record in records:
        if record.get("accuracy") is None:
            continue
        if record["trial"] in cached:
            report.judged.append(Judged(**cached[record["trial"]]))
            continue
        cfg = SubnetConfig.from_dict(record["config"])
        routed = oracle.routed_network(cfg) if cfg.routed else None
        accuracy = oracle.accuracy(cfg, routed)
        routes = [share.to_dict() for share in oracle.routed_score(cfg, routed).routes] if routed is not None else None
        report.judged.append(Judged(record["trial"], kind_of(record), record["config"], float(record["flops"]),
                                    float(record["effective_flops"]), float(record["latency_by_batch"]["1"]["seconds"]),
                                    accuracy, float(record["accuracy"]), routes=routes))
        atomic_write_text(cache_path, json.dumps([asdict(j) for j in report.judged], default=str))
    report.full_accuracy = next(j.accuracy for j in report.judged if j.trial == full["trial"])
    fronts(report)
    on_fronts = {trial for members in report.fronts.values() for trial in members}
    for row in report.judged:  # untrained twins of the static members of either front
        if row.kind == "static" and row.trial in on_fronts and row.untrained is None:
            twin = untrained_network(SubnetConfig.from_dict(row.config), seed=seed, with_gates=supernet.with_gates,
                                     gate_options=options)
            row.untrained = oracle.score(oracle.recalibrate(twin.eval()))
    atomic_write_text(cache_path, json.dumps([asdict(j) for j in report.judged], default=str))
    return report, oracle


def _static(cfg: SubnetConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    resolution = records[0]["config"]["resolution"]
    return SubnetConfig(cfg.space, dict(cfg.channels), None, resolution).to_dict()


def fronts(report: Report) -> None:
    records = [{"trial": j.trial, "config": j.config, "accuracy": j.accuracy, "effective_flops": j.effective_flops,
                "latency": {"seconds": j.latency_batch1_s}} for j in report.judged]
    costs = {"effective_flops": lambda j: j.effective_flops, "latency_batch1": lambda j: j.latency_batch1_s}
    full_cost = {"effective_flops": report.full_flops, "latency_batch1": report.full_latency_batch1_s}
    for name, cost in costs.items():
        objective = "flops" if name == "effective_flops" else "latency"
        report.fronts[name] = [r["trial"] for r in pareto_front(records, objective)]
        static = [j for j in report.judged if j.kind == "static"]
        best_margin, best_match = None, None
        for j in (j for j in report.judged if j.kind == "routed"):
            cheaper = [s.accuracy for s in static if cost(s) <= cost(j)]
            if not cheaper:  # cheaper than every static network: nothing to beat, no evidence either way
                continue
            margin = j.accuracy - max(cheaper)
            if best_margin is None or margin > best_margin[1]:
                best_margin = (j.trial, margin)
            share = cost(j) / full_cost[name]
            if share <= MATCH_COST and j.accuracy >= report.full_accuracy - MATCH_WITHIN and (
                    best_match is None or share < best_match[1]):
                best_match = (j.trial, share)
        passed = (best_margin is not None and best_margin[1] >= BEATS_BY) or best_match is not None
        report.pays[name] = {"passed": passed, "best_margin_over_cheaper_static": best_margin,
                             "matches_full_at_cost_share": best_match}


def equal_cost(report: Report) -> None:
    for share in COST_SHARES:
        row: dict[str, Any] = {"flops_share": share}
        for kind in ("static", "gated", "routed"):
            members = [j for j in report.judged if j.kind == kind and j.effective_flops <= share * report.full_flops * 1.0001]
            best = max(members, key=lambda j: j.accuracy, default=None)
            row[kind] = None if best is None else {"trial": best.trial, "accuracy": best.accuracy,
                                                   "effective_flops": best.effective_flops,
                                                   "latency_batch1_s": best.latency_batch1_s}
        report.equal_cost.append(row)


class _OwnBatch(torch.nn.Module):
    """A static network that runs its own images whatever it is handed: a group of a routed batch timed alone, in
    the same interleaved rounds as the routed network (measure_latencies hands every network the same input)."""

    def __init__(self, network: torch.nn.Module, images: torch.Tensor) -> None:
        super().__init__()
        self.network, self.images = network, images

    def forward(self, _: torch.Tensor) -> torch.Tensor:
        return self.network(self.images)


def _time_blocks(networks: list[torch.nn.Module], x: torch.Tensor, *, rounds: int, block: int) -> list[float]:
    """Seconds per forward of each network on ``x``: every round runs each network ``block`` times in a row (warm, as
    a deployed network serving one input after another; the first forward of a block untimed), the order rotating
    from round to round; per network the median over rounds of each block's median. Alternating single forwards
    instead (:func:`measure_latencies`) times every network with its weights evicted by the other's."""
    medians: list[list[float]] = [[] for _ in networks]
    for i in range(rounds + 1):  # round 0 warms up
        for k in [*range(i % len(networks), len(networks)), *range(i % len(networks))]:
            networks[k](x)
            times = []
            for _ in range(block):
                started = time.perf_counter()
                networks[k](x)
                times.append(time.perf_counter() - started)
            if i:
                medians[k].append(statistics.median(times))
    return [statistics.median(values) for values in medians]


def _routers_of(judged: Any) -> str:
    """``every`` router block decides, or the ``first`` alone (for the whole network)."""
    thresholds = judged.config["route_thresholds"]
    return "first" if len(thresholds) == 1 and len(get_space(judged.config["space"]).router_blocks) > 1 else "every"


def speed(args: argparse.Namespace, report: Report, oracle: Any) -> None:
    """Batch 1: each image's routed time / its route's static time. Batch N, every network timed in the same
    interleaved rounds: the routed batch, the widest static network, each group's route run alone on the group's
    images, and each route's static network on the whole batch. Three readings of the routed time: / the FLOPs-
    weighted expectation (the widest network's time x effective FLOPs / FLOPs; the target), / its groups run
    alone (what splitting the batch costs, the smaller groups' cache advantage included), and / the share-
    weighted statics at N (sum over routes of share x that route's static time at N: the routers' and the
    gathers' cost at equal batch size), beside the statics' own time / FLOPs ratio (how far the narrow routes
    run from FLOPs-proportional time on this machine, which no router can change)."""
    routed = sorted((j for j in report.judged if j.kind == "routed"), key=lambda j: -j.accuracy)
    on_front = [j for j in routed if j.trial in set(report.fronts.get("latency_batch1", []))]
    ranked = on_front + [j for j in routed if j not in on_front]
    # up to --speed-configs of each way of routing: every router deciding, or the first alone
    chosen = [j for mode in ("every", "first") if (of_mode := [k for k in ranked if _routers_of(k) == mode])
              for j in of_mode[: args.speed_configs]]
    if args.speed_trials is not None:
        chosen = [j for trial in args.speed_trials for j in routed if j.trial == trial]
    images = oracle.data.val[: args.speed_images]
    counter = ShapeFlopCounter(oracle.supernet, oracle.data.resolution)
    for j in chosen:
        cfg = SubnetConfig.from_dict(j.config)
        network = oracle.routed_network(cfg).eval()
        ratios, shared_ratios = [], []
        with torch.inference_mode():
            for image in images.split(1):
                network(image)
                route = tuple(network.last_levels[0].tolist())  # type: ignore[union-attr]
                static = oracle.subnet(network.route_config(route)).eval()
                routed_time, static_time, shared_time = _time_blocks(
                    [network, static, network.route_network(route)], image, rounds=args.repeats, block=args.block)
                ratios.append(routed_time / static_time)
                shared_ratios.append(routed_time / shared_time)
            batch = oracle.data.val[: args.batch]
            network(batch)
            levels = network.last_levels
            assert levels is not None
            present = sorted({tuple(r) for r in levels.tolist()})
            rows = {route: (levels == torch.tensor(route)).all(dim=1) for route in present}
            statics = {route: oracle.subnet(network.route_config(route)).eval() for route in present}
            widest = oracle.subnet(cfg.static()).eval()
            timed = [network, widest, *(_OwnBatch(statics[r], batch[rows[r]]) for r in present),
                     *(statics[r] for r in present)]
            seconds = [latency.seconds for latency in
                       measure_latencies(timed, batch, repeats=args.batch_repeats, warmup=1, warmup_seconds=0.5,
                                         threads=args.threads)]
        measured, widest_time = seconds[0], seconds[1]
        alone = dict(zip(present, seconds[2 : 2 + len(present)]))
        at_batch = dict(zip(present, seconds[2 + len(present) :]))
        shares = {route: float(rows[route].double().mean()) for route in present}
        summed = sum(alone.values())
        share_weighted = sum(shares[route] * at_batch[route] for route in present)
        flops_weighted = widest_time * j.effective_flops / j.flops
        route_flops = {route: float(counter(network.route_config(route))) for route in present}
        # each route's static time relative to FLOPs-proportional time (the widest network's time x its FLOPs share)
        efficiency = {route: at_batch[route] / (widest_time * route_flops[route] / j.flops) for route in present}
        row = {"trial": j.trial, "routers": _routers_of(j), "images": len(ratios),
               "batch1_ratio_median": statistics.median(ratios),
               "batch1_ratio_mean": statistics.fmean(ratios), "batch1_ratio_max": max(ratios),
               "batch1_block": args.block, "batch1_rounds": args.repeats,
               "batch1_ratio_to_shared_median": statistics.median(shared_ratios),
               "batch": args.batch, "batch_repeats": args.batch_repeats, "batch_seconds": measured,
               "widest_batch_seconds": widest_time,
               "groups": {",".join(map(str, k)): int(rows[k].sum()) for k in present},
               "groups_alone_seconds": summed, "share_weighted_seconds": share_weighted,
               "route_time_over_flops_proportional": {",".join(map(str, k)): v for k, v in efficiency.items()},
               "batch_over_groups": measured / summed, "batch_over_share_weighted": measured / share_weighted,
               "batch_over_flops_weighted": measured / flops_weighted}
        row["passed"] = row["batch1_ratio_median"] <= SPEED_TARGET_BATCH1 and row["batch_over_flops_weighted"] <= SPEED_TARGET_BATCH
        report.speed.append(row)
        print(f"{'PASS' if row['passed'] else 'FAIL'}: routed trial {j.trial} "
              f"({'every router deciding' if row['routers'] == 'every' else 'the first router alone'}): batch 1, "
              f"{len(ratios)} images, routed / static "
              f"of its route median {row['batch1_ratio_median']:.3f} (max {row['batch1_ratio_max']:.3f}, target <= "
              f"{SPEED_TARGET_BATCH1}; / the route assembled from the routed network's own modules "
              f"{row['batch1_ratio_to_shared_median']:.3f}); batch {args.batch}: / FLOPs-weighted expectation "
              f"{row['batch_over_flops_weighted']:.3f} (target <= {SPEED_TARGET_BATCH}), / its groups alone "
              f"{row['batch_over_groups']:.3f}, / share-weighted statics at {args.batch} "
              f"{row['batch_over_share_weighted']:.3f}; routes' static time / FLOPs-proportional: "
              + ", ".join(f"{k} {v:.2f}" for k, v in row["route_time_over_flops_proportional"].items()), flush=True)


def route_embeddings(network: Any, route: tuple[int, ...], images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features (N, C_route) of ``images`` sent down ``route`` of a routed network (no routers run), in batches."""
    return torch.cat([network.route_features(images[s : s + batch_size], route).float()
                      for s in range(0, len(images), batch_size)])


def routers(report: Report, oracle: Any) -> None:
    """What the routers of the most accurate routed candidates learned: the share of each route; which classes
    go down the narrowest route; and whether the images they send narrow are those the narrow route gets right
    (each image's kNN correctness on the narrowest and the widest uniform route, whatever its own route)."""
    routed = sorted((j for j in report.judged if j.kind == "routed"), key=lambda j: -j.accuracy)[:3]
    labels = oracle.data.val_labels
    for j in routed:
        cfg = SubnetConfig.from_dict(j.config)
        network = oracle.routed_network(cfg).eval()
        levels = []
        with torch.no_grad():
            for start in range(0, len(oracle.data.val), 256):
                network(oracle.data.val[start : start + 256])
                levels.append(network.last_levels)
        levels = torch.cat(levels)
        count = len(network.router_blocks)
        correct = {}
        for name, level in (("narrowest", 0), ("widest", len(network.levels) - 1)):
            route = (level,) * count
            embed = lambda images, route=route: route_embeddings(network, route, images)  # noqa: E731
            bank = oracle.bank_features(network.route_config(route), embed)
            predicted = knn_predict(bank, oracle.data.bank_labels, embed(oracle.data.val), num_classes=oracle.data.num_classes,
                                    k=oracle.k, temperature=oracle.temperature)
            correct[name] = predicted == labels
        narrow = (levels == 0).all(dim=1)
        wide = ~narrow
        # threshold-free: does the first router rank images by how well the narrow route does on them?
        with torch.no_grad():
            first = torch.cat([network.head(0, network.prefix_width)(network.entering(oracle.data.val[s : s + 256], ()))
                               for s in range(0, len(oracle.data.val), 256)])
        suffices = torch.sigmoid(first[:, 0].float())
        quintiles = []
        for part in torch.argsort(suffices, descending=True).chunk(5):
            quintiles.append({"p_narrow_suffices": float(suffices[part].mean()),
                              "narrowest_route_accuracy": float(correct["narrowest"][part].float().mean()),
                              "widest_route_accuracy": float(correct["widest"][part].float().mean())})
        share = lambda mask, hits: float(hits[mask].float().mean()) if mask.any() else None  # noqa: E731
        report.routers.append({
            "trial": j.trial, "routes": j.routes, "narrowest_share": float(narrow.float().mean()),
            "narrowest_share_by_class": [float(narrow[labels == c].float().mean()) for c in range(oracle.data.num_classes)],
            "sent_narrowest": {"narrowest_route_accuracy": share(narrow, correct["narrowest"]),
                               "widest_route_accuracy": share(narrow, correct["widest"])},
            "sent_wider": {"narrowest_route_accuracy": share(wide, correct["narrowest"]),
                           "widest_route_accuracy": share(wide, correct["widest"])},
            "all": {"narrowest_route_accuracy": float(correct["narrowest"].float().mean()),
                    "widest_route_accuracy": float(correct["widest"].float().mean())},
            "first_router_quintiles": quintiles,
        })
        row = report.routers[-1]
        percent = lambda value: "-" if value is None else f"{value:.1%}"  # noqa: E731
        print(f"routed trial {j.trial}: routes " + ", ".join(f"{tuple(r['multipliers'])} {r['fraction']:.1%}"
                                                                for r in j.routes or [])
              + f"; {row['narrowest_share']:.1%} take the narrowest route (narrowest / widest route accuracy on them "
              f"{percent(row['sent_narrowest']['narrowest_route_accuracy'])} / "
              f"{percent(row['sent_narrowest']['widest_route_accuracy'])}, on the others "
              f"{percent(row['sent_wider']['narrowest_route_accuracy'])} / {percent(row['sent_wider']['widest_route_accuracy'])})",
              flush=True)
        print(f"  first router, images in fifths by p(narrowest level suffices), most confident first: "
              + "; ".join(f"p {q['p_narrow_suffices']:.3f}: narrowest {q['narrowest_route_accuracy']:.1%}, widest "
                          f"{q['widest_route_accuracy']:.1%}" for q in quintiles), flush=True)


def plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    colours = {"static": "tab:blue", "gated": "tab:orange", "routed": "tab:green"}
    markers = {"static": "o", "gated": "^", "routed": "s"}
    figure, panels = plt.subplots(1, 2, figsize=(13, 4.8))
    for axes, (name, cost, label) in zip(panels, (("effective_flops", lambda j: j.effective_flops / 1e6, "effective MFLOPs (fvcore)"),
                                                   ("latency_batch1", lambda j: j.latency_batch1_s * 1e3, "latency at batch 1 (ms, anchored CPU)"))):
        for kind in ("static", "gated", "routed"):
            members = [j for j in report.judged if j.kind == kind]
            if members:
                axes.scatter([cost(j) for j in members], [j.accuracy * 100 for j in members], s=18, alpha=0.6,
                             c=colours[kind], marker=markers[kind], label=f"{kind} ({len(members)})")
        front = [next(j for j in report.judged if j.trial == t) for t in report.fronts[name]]
        axes.plot([cost(j) for j in front], [j.accuracy * 100 for j in front], "-", c="tab:red", drawstyle="steps-post",
                  label="front")
        axes.axhline(report.raw_pixels * 100, ls=":", c="dimgray", label=f"raw pixels {report.raw_pixels:.1%}")
        axes.axhline(report.untrained_full * 100, ls="-.", c="dimgray", label=f"untrained full {report.untrained_full:.1%}")
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel(label + ", log scale")
        axes.set_ylabel(f"kNN top-1 on {report.judge_images} held-out images (%)")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=120))
    plt.close(figure)


def speed_only(args: argparse.Namespace) -> int:
    """Step 5 alone, on the candidates an earlier run judged (its ``--json``)."""
    earlier = json.loads(args.speed_from.read_text())
    kept = {name: earlier[name] for name in ("checkpoint", "judge_images", "bank_images", "raw_pixels", "untrained_full",
                                             "full_accuracy", "full_flops", "full_latency_batch1_s", "fronts")}
    report = Report(**kept, machine=machine_record(args.threads))
    report.judged = [Judged(**row) for row in earlier["judged"]]
    if not any(row.kind == "routed" for row in report.judged):
        print(f"bench_routing: {args.speed_from} judged no routed candidate; nothing to re-time", file=sys.stderr)
        return 2
    routed = {row.trial for row in report.judged if row.kind == "routed"}
    unknown = sorted(set(args.speed_trials or ()) - routed)
    if unknown:
        print(f"bench_routing: --speed-trials: trial {unknown[0]} is not a routed candidate of {args.speed_from}; "
              f"routed trials: {sorted(routed)}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    speed(args, report, judging_oracle(args)[2])
    report.seconds = {"speed": time.perf_counter() - started}
    passed = all(row["passed"] for row in report.speed)
    print(f"{'PASS' if passed else 'FAIL'}: speed of {len(report.speed)} routed candidates of {args.speed_from}, "
          f"{report.seconds['speed']:.0f} s")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"speed_from": str(args.speed_from), "speed": report.speed,
                                                 "machine": report.machine, "seconds": report.seconds,
                                                 "passed": passed}, indent=2, default=str) + "\n")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.speed_from is not None:
        return speed_only(args)
    if args.out is None:
        print("bench_routing: --out is required (the search study and the figures go there)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    records = run_search(args)
    searched = time.perf_counter()
    report, oracle = judge(args, records)
    report.seconds = {"search": searched - started, "judge": time.perf_counter() - searched}
    equal_cost(report)
    print(f"references on {report.judge_images} held-out images: raw pixels {report.raw_pixels:.2%}, untrained full "
          f"network {report.untrained_full:.2%}; full network {report.full_accuracy:.2%}")
    for name, entry in report.pays.items():
        margin, match = entry["best_margin_over_cheaper_static"], entry["matches_full_at_cost_share"]
        print(f"{'PASS' if entry['passed'] else 'FAIL'}: routing pays on the {name} front: best routed margin over every "
              "static network of lower or equal cost " + ("-" if margin is None else f"{margin[1] * 100:+.2f} points (trial "
              f"{margin[0]}, target >= {BEATS_BY * 100:+.2f})") + f"; matches the full network (within {MATCH_WITHIN:.1%}) at "
              + ("no routed network's cost" if match is None else f"{match[1]:.0%} of its cost (trial {match[0]})") + f" (target <= {MATCH_COST:.0%})",
              flush=True)
    for row in report.equal_cost:
        cells = [f"{kind} " + (f"{row[kind]['accuracy']:.2%} (trial {row[kind]['trial']})" if row[kind] else "-")
                 for kind in ("static", "gated", "routed")]
        print(f"at <= {row['flops_share']:.0%} of the full network's FLOPs: " + ", ".join(cells))
    if not args.skip_speed:
        speed(args, report, oracle)
    if not args.skip_routers:
        routers(report, oracle)
    plot(report, args.out / "routing_fronts.png")
    report.seconds["all"] = time.perf_counter() - started
    print(f"{'PASS' if report.passed else 'FAIL'}: {time.perf_counter() - started:.0f} s; figure {args.out / 'routing_fronts.png'}")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({**asdict(report), "passed": report.passed}, indent=2, default=str) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
