"""Routed candidates in the search: scored beside static and gated ones, one study that resumes, refused where
there are no routers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nas.study.candidates import CandidateEvaluator, candidate_kinds, config_params, suggest_config
from nas.study.oracle import RoutingUnavailable, build_oracle
from nas.study.run import search
from search_spaces import SubnetConfig, get_space
from search_spaces.config import ConfigError
from supernet.io.checkpoint import load_supernet
from tests.nas.conftest import TINY_RESOLUTION, oracle_settings, routed_config_that_splits

pytestmark = pytest.mark.usefixtures("single_thread")


def test_a_study_mixing_static_gated_and_routed_candidates_resumes(routed_checkpoint: Path, make_request: Callable,
                                                                    tmp_path: Path) -> None:
    first = search(make_request(routed_checkpoint, tmp_path, budget=None, trials=9, sampler="random"))
    kinds = {record["config"].get("route_thresholds") is not None for record in first.records}
    assert kinds == {True, False}, "the seeds and random proposals hold routed and unrouted candidates"
    routed = [r for r in first.records if r["config"].get("route_thresholds")]
    assert all(r["routes"] and abs(sum(share["fraction"] for share in r["routes"]) - 1) < 1e-6 for r in routed)
    assert all(r["effective_flops"] <= r["flops"] for r in routed)
    assert first.references and set(first.references) == {"raw_pixels", "untrained_full"}
    resumed = search(make_request(routed_checkpoint, tmp_path, budget=None, trials=12, sampler="random"))
    assert len(resumed.records) == 12
    assert [r["trial"] for r in resumed.records[:9]] == [r["trial"] for r in first.records]
    csv = (tmp_path / "pareto.csv").read_text().splitlines()
    assert csv[0].split(",")[-2] == "kind"


def test_trial_parameters_round_trip_for_every_kind(routed_checkpoint: Path) -> None:
    import optuna

    space = get_space("tiny")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    assert candidate_kinds(space, gates_available=True, routing_available=True) == ("static", "gated", "routed")
    routed = space.uniform_config(0.75).with_routes({"layer2.0": 0.4})
    for cfg in (space.max_config(), routed, space.min_config(0.5)):
        study.enqueue_trial(config_params(cfg, space, gates_available=True, routing_available=True))
        trial = study.ask()
        assert suggest_config(trial, space, gates_available=True, routing_available=True) == cfg
        study.tell(trial, (0.0, 1.0))


def test_a_checkpoint_without_routers_refuses_a_routed_config_in_one_line(tiny_checkpoint: Path,
                                                                         search_overrides: list[str]) -> None:
    supernet, payload = load_supernet(tiny_checkpoint)
    oracle = build_oracle(supernet.eval(), payload, *oracle_settings(search_overrides), "cpu")
    cfg = SubnetConfig("tiny", dict(supernet.space.max_config().channels), None, TINY_RESOLUTION, {"layer2.0": 0.5})
    with pytest.raises(RoutingUnavailable, match=r"^route_thresholds: this checkpoint has no width routers; train them"):
        oracle.routed_network(cfg)


def test_routed_costs_and_score_follow_the_routes(routed_checkpoint: Path, search_overrides: list[str]) -> None:
    supernet, payload = load_supernet(routed_checkpoint)
    oracle = build_oracle(supernet.eval(), payload, *oracle_settings(search_overrides), "cpu")
    evaluator = CandidateEvaluator(supernet, oracle, flops_budget=None, latency_budget=None,
                                   latency=__import__("nas.settings", fromlist=["x"]).load_search_settings(search_overrides).latency)
    widths = SubnetConfig("tiny", dict(supernet.space.max_config().channels), None, TINY_RESOLUTION)
    cfg = routed_config_that_splits(oracle, supernet, widths)
    result = evaluator.evaluate(cfg)
    shares = result.routes
    assert shares is not None and len(shares) > 1
    # the score is the images' mean correctness over their routes
    expected = sum(share["accuracy"] * share["images"] for share in shares) / sum(share["images"] for share in shares)
    assert result.accuracy == pytest.approx(expected)
    # each route's kNN is the static network's of that route, when it takes every image
    network = oracle.routed_network(cfg)
    for share in shares:
        static = oracle.accuracy(network.route_config(share["levels"]))
        assert 0.0 <= static <= 1.0
    static_flops = {tuple(s["levels"]): evaluator.static_flops(network.route_config(s["levels"])) for s in shares}
    lowest, highest = min(static_flops.values()), max(static_flops.values())
    assert lowest < result.effective_flops < result.flops and highest <= result.flops
    assert result.latency_by_batch is not None and result.static_latency_by_batch is not None
    assert result.latency["anchor"] == "tiny at uniform width 0.5"
    torch.testing.assert_close(torch.tensor(result.latency["seconds"]),
                               torch.tensor(result.latency["ratio"] * result.latency["anchor_seconds"]))


@pytest.mark.parametrize("routers", ["every", "first"])
def test_a_routed_input_costs_its_route_and_the_routers_that_ran(routers: str) -> None:
    """Effective FLOPs per input: the route's static network plus one head per router that decides (both of
    ``small``'s, or the first alone), each counted by fvcore on what enters it."""
    from nas.cost import routed_input_flops
    from supernet import build_supernet
    from supernet.nn.flops import count_flops
    from supernet.nn.routing import RoutedNetwork, RouterSet

    torch.manual_seed(0)
    space = get_space("small")
    deciding = space.router_blocks if routers == "every" else space.router_blocks[:1]
    network = RoutedNetwork.build(build_supernet(space, with_gates=False).eval(), RouterSet(space, hidden_channels=8),
                                  space.uniform_config(1.0).with_routes(dict.fromkeys(deciding, 0.5)))
    images = torch.randn(4, 3, 16, 16)
    per_input = routed_input_flops(network, images)
    route = tuple(network.last_levels[0].tolist())
    assert (network.last_levels == torch.tensor(route)).all()  # untrained routers (zero logits): one route
    heads = network.router_heads(route)
    assert len(heads) == len(deciding)
    expected = count_flops(network.route_network(route), inputs=images[:1]) + sum(
        count_flops(head, inputs=x) for head, x in zip(heads, network.router_inputs(images[:1], route)))
    assert per_input.tolist() == [float(expected)] * 4
    assert sum(count_flops(head, inputs=x) for head, x in zip(heads, network.router_inputs(images[:1], route))) > 0


def test_the_search_proposes_routed_candidates_with_every_router_or_the_first_alone() -> None:
    import optuna

    space = get_space("small")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        cfg = suggest_config(trial, space, gates_available=False, routing_available=True)
        study.tell(trial, (0.0, 1.0))
        if cfg.routed:
            space.validate(cfg)
            seen.add(tuple(cfg.route_thresholds))
            assert trial.params["routers"] == ("every" if len(cfg.route_thresholds) == 2 else "first")
    assert seen == {("layer2.0", "layer3.0"), ("layer2.0",)}
    for cfg in (space.max_config().with_routes({"layer2.0": 0.3}), space.max_config().with_routes({"layer2.0": 0.3, "layer3.0": 0.6})):
        study.enqueue_trial(config_params(cfg, space, gates_available=False, routing_available=True))
        trial = study.ask()
        assert suggest_config(trial, space, gates_available=False, routing_available=True) == cfg
        study.tell(trial, (0.0, 1.0))
    three = get_space("resnet18_cifar")  # routers layer2.0, layer3.0, layer4.0: the first and the last is neither form
    with pytest.raises(ConfigError, match=r"^route_thresholds: routers \['layer2.0', 'layer4.0'\] decide; a search "
                                          r"proposes every router"):
        config_params(three.max_config().with_routes({"layer2.0": 0.5, "layer4.0": 0.5}), three, gates_available=False,
                      routing_available=True)
