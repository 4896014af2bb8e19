"""How much could a width router earn, if it knew its signal for free? (issue 22)

``bench_routing.py`` judges the routers the supernet learned; this bounds what *any* router could do with a
given per-image signal on the same supernet and the same judging images. One decision per input (the first
router alone) sends each held-out image down the uniform route at a narrow level or at the widest level of a
base config (the widest network, and the per-layer upper bounds of every routed candidate the judged run scored:
the blocks before the first router keep the base's widths on every route); images are ranked by a signal, the
ones that most look like "the narrow level suffices" go narrow, and the share sent wide is swept from 0 to 1. Each point's accuracy is each image's kNN answer on its
route (the bank embedded by that route's static network, as the judge scores routed networks), its cost the
routes' fvcore FLOPs weighted by their shares (the router's own cost left out: this is a bound). A point pays
where it beats every static network of lower or equal cost by >= 1 point, the issue's target: the static
networks the judged run scored (``--judged``, the JSON of a ``bench_routing.py`` run on the same checkpoint and
images) *and every base's uniform routes*, which are static sub-networks too. Without the routes, a point would
be credited for the static front's gaps (a search of 80 trials leaves them) rather than for routing. So the
margin depends on how densely the static side is sampled: with fewer bases (``--trials``) fewer routes join it
and margins grow (trial 67 alone: the neighbour overlap +1.08, against +0.78 with every base); ``over_mixing``
does not depend on it.

Mixing two static networks at random already lies above the step of "every static network of lower or equal
cost" between their costs, so each point is also read against random routing at the same share: its accuracy
minus the line between the two routes' accuracies (``over_mixing``), what the signal knows about the images.

Signals, label-free first:

* ``random``: no signal at all (a random order; the control: its ``over_mixing`` is noise around 0);
* ``router``: the trained first router's logit that the narrow level suffices (what the product uses);
* ``neighbour_overlap``: the share of the image's k nearest bank images the narrow route shares with the widest
  route (label-free, but it needs both routes: a target a router could be trained on, known here for free);
* ``narrow_confidence``: the narrow route's mean cosine similarity to its k nearest bank images (label-free,
  the narrow route alone: what a cascade that runs the narrow route first could read);
* ``vote_share``: the narrow route's top kNN vote share (reads the bank's labels; the issue's own headroom
  figure routed by it);
* ``oracle``: whether the narrow route is right and the widest wrong (reads the judging labels: the ceiling).

    python benchmarks/bench_routing_headroom.py --checkpoint /work/runs/c10_supernet/checkpoint.pt \\
        --test-root /work/data/cifar10/heldout --judged /work/runs/routing2.json --json headroom.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench_routing import BEATS_BY, MATCH_COST, MATCH_WITHIN, judging_oracle, route_embeddings
from nas.cost import count_flops
from search_spaces import SubnetConfig
from supernet.evaluation.knn import knn_votes, nearest_neighbours
from supernet.io.files import atomic_write_text
from supernet.io.provenance import machine_record

LABEL_FREE = ("random", "router", "neighbour_overlap", "narrow_confidence")
SIGNALS = (*LABEL_FREE, "vote_share", "oracle")
STEPS = 20  # shares sent wide: 0, 1/STEPS, ..., 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--test-root", type=Path, required=True, help="the judging split (an ImageFolder tree)")
    parser.add_argument("--judged", type=Path, required=True,
                        help="a bench_routing.py --json on the same checkpoint and images: the static networks to beat")
    parser.add_argument("--bank", type=int, default=10000, help="training images the judging kNN votes with")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="breaks ties between images of equal signal")
    parser.add_argument("--trials", type=int, nargs="+", default=None, metavar="TRIAL",
                        help="base configs: these routed trials' upper bounds (default: every routed trial's, and the "
                             "widest); fewer bases put fewer routes on the static side, so margins grow")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="search settings (configs/search.yaml)")
    return parser.parse_args(argv)


def load_judged(path: Path, bank: int, trials: list[int] | None
                ) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, dict[str, int]]]:
    """The judged static networks of a bench_routing run, its references, and the base configs' channels by name
    (``trial N`` for each of ``trials``, default every routed trial, whose upper bounds were not seen before)."""
    report = json.loads(path.read_text())
    if report.get("bank_images") != bank:
        raise SystemExit(f"--judged {path}: judged with a bank of {report.get('bank_images')} images, not --bank {bank}")
    statics = [{"trial": j["trial"], "accuracy": j["accuracy"], "flops": j["effective_flops"]}
               for j in report["judged"] if j["kind"] == "static"]
    references = {key: report[key] for key in ("raw_pixels", "untrained_full", "full_accuracy", "full_flops")}
    routed = {j["trial"]: j["config"]["channels"] for j in report["judged"] if j["kind"] == "routed"}
    unknown = sorted(set(trials or ()) - set(routed))
    if unknown:
        raise SystemExit(f"--trials: {unknown[0]} is not a routed trial of {path}; routed trials: {sorted(routed)}")
    bases: dict[str, dict[str, int]] = {}
    for trial in trials or sorted(routed):
        if routed[trial] not in bases.values():
            bases[f"trial {trial}"] = routed[trial]
    return statics, references, bases


class Route:
    """One uniform route of the routed network: its validation answers and what the signals read from it."""

    def __init__(self, network: Any, oracle: Any, route: tuple[int, ...], example: torch.Tensor) -> None:
        def embed(images: torch.Tensor) -> torch.Tensor:
            return route_embeddings(network, route, images)

        data = oracle.data
        self.route, self.multiplier = route, network.levels[route[0]]
        self.flops = count_flops(network.route_network(route), inputs=example)
        bank = oracle.bank_features(network.route_config(route), embed)
        self.neighbours = nearest_neighbours(lambda: [bank], embed(data.val), k=oracle.k)
        votes = knn_votes(self.neighbours, data.bank_labels, num_classes=data.num_classes, temperature=oracle.temperature)
        self.correct = votes.argmax(dim=1) == data.val_labels
        self.vote_share = (votes.max(dim=1).values / votes.sum(dim=1)).float()


def signals(network: Any, oracle: Any, narrow: Route, wide: Route, seed: int) -> dict[str, torch.Tensor]:
    """Each signal (Q,): higher means the narrow level is more likely to suffice."""
    val = oracle.data.val
    head = network.head(0, network.prefix_width)
    router = torch.cat([head(network.entering(val[s : s + 256], ()))[:, narrow.route[0]].float()
                        for s in range(0, len(val), 256)])
    shared = (narrow.neighbours.index.unsqueeze(2) == wide.neighbours.index.unsqueeze(1)).any(dim=2)
    return {
        "random": torch.rand(len(val), generator=torch.Generator().manual_seed(seed + 1)),
        "router": router,
        "neighbour_overlap": shared.float().mean(dim=1),
        "narrow_confidence": narrow.neighbours.similarity.mean(dim=1),
        "vote_share": narrow.vote_share,
        "oracle": narrow.correct.float() - wide.correct.float(),
    }


def sweep(signal: torch.Tensor, narrow: Route, wide: Route, seed: int) -> list[dict[str, float]]:
    """Accuracy and FLOPs per share sent wide, the images of lowest signal going wide first (ties in random order)."""
    count = len(signal)
    shuffled = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    order = shuffled[torch.argsort(signal[shuffled], stable=True)]  # ascending signal: the first go wide
    narrow_hits, wide_hits = narrow.correct[order].double(), wide.correct[order].double()
    # images [0, n) wide, [n, Q) narrow: prefix sums of the wide answers, suffix sums of the narrow ones
    wide_prefix = torch.cat([torch.zeros(1, dtype=torch.float64), wide_hits.cumsum(0)])
    narrow_suffix = torch.cat([narrow_hits.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
    narrow_accuracy, wide_accuracy = float(narrow_hits.mean()), float(wide_hits.mean())
    points = []
    for step in range(STEPS + 1):
        n = round(count * step / STEPS)
        share = n / count
        accuracy = float((wide_prefix[n] + narrow_suffix[n]) / count)
        points.append({"wide_share": share, "accuracy": accuracy, "flops": (1 - share) * narrow.flops + share * wide.flops,
                       "over_mixing": accuracy - ((1 - share) * narrow_accuracy + share * wide_accuracy)})
    return points


def judge_points(points: list[dict[str, float]], statics: list[dict[str, Any]], references: dict[str, float]
                 ) -> dict[str, Any]:
    """The best margin over every static network of lower or equal cost, and the cheapest match of the full network."""
    best, match = None, None
    for point in points:
        cheaper = [s["accuracy"] for s in statics if s["flops"] <= point["flops"]]
        if cheaper:
            margin = point["accuracy"] - max(cheaper)
            if best is None or margin > best["margin"]:
                best = {**point, "margin": margin}
        share = point["flops"] / references["full_flops"]
        if share <= MATCH_COST and point["accuracy"] >= references["full_accuracy"] - MATCH_WITHIN and (
                match is None or share < match["cost_share"]):
            match = {**point, "cost_share": share}
    passed = (best is not None and best["margin"] >= BEATS_BY) or match is not None
    return {"passed": passed, "best_margin": best, "matches_full": match}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    statics, references, bases = load_judged(args.judged, args.bank, args.trials)
    supernet, _, oracle = judging_oracle(args)
    space = supernet.space
    widest = dict(space.max_config().channels)
    if args.trials is None and widest not in bases.values():
        bases = {"widest": widest, **bases}
    example = oracle.data.val[:1]
    print(f"references on {len(oracle.data.val)} held-out images: raw pixels {references['raw_pixels']:.2%}, untrained "
          f"full network {references['untrained_full']:.2%}, full network {references['full_accuracy']:.2%}", flush=True)
    results, base_routes, route_statics = [], {}, []
    for base, channels in bases.items():
        # the first router alone decides; its threshold is not read here
        cfg = SubnetConfig(space.name, dict(channels), None, oracle.data.resolution,
                           {space.router_blocks[0]: 0.5})
        network = oracle.routed_network(cfg).eval()
        with torch.no_grad():
            routes = [Route(network, oracle, route, example) for route in network.routes()]
            base_routes[base] = [{"multiplier": r.multiplier, "accuracy": float(r.correct.double().mean()), "flops": r.flops}
                                 for r in routes]
            route_statics.extend({"trial": f"{base}, uniform {r['multiplier']:g}", **r} for r in base_routes[base])
            print(f"{base}: uniform routes " + ", ".join(f"{r.multiplier:g} {r.correct.double().mean():.2%} at "
                                                         f"{r.flops / 1e6:.1f} MFLOPs" for r in routes), flush=True)
            wide = routes[-1]
            for narrow in routes[:-1]:
                for name, signal in signals(network, oracle, narrow, wide, args.seed).items():
                    results.append({"base": base, "narrow": narrow.multiplier, "wide": wide.multiplier, "signal": name,
                                    "label_free": name in LABEL_FREE, "points": sweep(signal, narrow, wide, args.seed)})
    for result in results:  # judged once every base's routes are known
        result.update(judge_points(result["points"], [*statics, *route_statics], references))
    seconds = time.perf_counter() - started
    print("per signal, over every base config and level pair: the best margin over every static network of lower or "
          "equal cost (where, its share sent wide, and its gain over random routing there); the best gain over random "
          "routing anywhere, as the mean over the base configs of each one's best:")
    for name in SIGNALS:
        mine = [r for r in results if r["signal"] == name]
        best = max(mine, key=lambda r: r["best_margin"]["margin"])
        point, match = best["best_margin"], min((r["matches_full"]["cost_share"] for r in mine if r["matches_full"]),
                                                default=None)
        gains = {}
        for r in mine:
            gains[r["base"]] = max(gains.get(r["base"], -1.0), max(p["over_mixing"] for p in r["points"]))
        print(f"  {'PASS' if any(r['passed'] for r in mine) else 'FAIL'} {name}{'' if name in LABEL_FREE else ' (labels)'}: "
              f"{point['margin'] * 100:+.2f} points ({best['base']}, {best['narrow']:g} or {best['wide']:g}: "
              f"{point['accuracy']:.2%} at {point['flops'] / 1e6:.1f} MFLOPs, {point['wide_share']:.0%} wide, "
              f"{point['over_mixing'] * 100:+.2f} over random)"
              + ("" if match is None else f"; matches the full network at {match:.0%} of its cost")
              + f"; over random routing: best {max(gains.values()) * 100:+.2f}, mean of the bases' best "
              f"{sum(gains.values()) / len(gains) * 100:+.2f}", flush=True)
    passed = any(r["passed"] for r in results if r["label_free"] and r["signal"] != "random")
    print(f"{'PASS' if passed else 'FAIL'}: a label-free signal known for free pays (>= {BEATS_BY * 100:g} point over "
          f"cheaper static networks, or the full network within {MATCH_WITHIN * 100:g} at <= {MATCH_COST:.0%} of its "
          f"cost); {seconds:.0f} s")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({
            "checkpoint": str(args.checkpoint), "judged": str(args.judged), "references": references,
            "bases": {base: {"channels": bases[base], "routes": base_routes[base]} for base in bases},
            "results": results, "passed": passed, "seconds": seconds, "machine": machine_record(args.threads)},
            indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
