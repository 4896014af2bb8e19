"""Width routing: decisions, routed execution equal to the static sub-network of each route, grouped batches."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from search_spaces import SearchSpace, SubnetConfig, get_space
from search_spaces.config import ConfigError
from supernet import build_supernet
from supernet.nn.bn import recalibrate_bn
from supernet.nn.routing import (
    RoutedNetwork,
    RouterSet,
    RoutingError,
    check_levels,
    logit_threshold,
    route_levels,
    segments_of,
)
from tests.conftest import randomize_batchnorm, small_gated_spaces, small_resolution

pytestmark = pytest.mark.usefixtures("single_thread")


def _spaces() -> dict[str, SearchSpace]:
    spaces = small_gated_spaces()
    return {"basic": spaces["basic"], "small": get_space("small"), "bottleneck": spaces["bottleneck"],
            "inverted_residual": spaces["inverted_residual"]}


def _routers(space: SearchSpace, *, levels: tuple[float, ...] = (0.25, 0.5, 1.0), seed: int = 0) -> RouterSet:
    routers = RouterSet(space, levels=levels, hidden_channels=16)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for router in routers.routers.values():
            router.fc1.weight.copy_(torch.randn(router.fc1.weight.shape, generator=generator))
            router.fc2.weight.copy_(torch.randn(router.fc2.weight.shape, generator=generator))
    return routers


def _spread(routed: RoutedNetwork, images: torch.Tensor) -> RoutedNetwork:
    """Centre each router's logits on their median over ``images`` entering it along the widest route, so
    the decisions at threshold 0.5 spread over the levels."""
    widest = len(routed.levels) - 1
    with torch.no_grad():
        for depth, name in enumerate(routed.router_blocks):
            if not routed.decides(depth):
                continue
            entering = routed.entering(images, (widest,) * depth)
            shift = routed.head(depth, entering.shape[1])(entering).median(dim=0).values
            for key, head in routed.heads.items():
                if key.startswith(f"router_{name.replace('.', '_')}_in"):
                    head.fc2.bias.sub_(shift)
    return routed


def _routed(space: SearchSpace, *, threshold: float = 0.5, seed: int = 0, widest: float = 1.0, deciding: str = "every"
            ) -> tuple[nn.Module, RouterSet, SubnetConfig, RoutedNetwork]:
    """A supernet with random BatchNorm, random routers, and its routed network at ``widest``, recalibrated on
    64 random images and with its routers spread over the levels. ``deciding="first"``: only the first router
    decides (for the whole network)."""
    supernet = randomize_batchnorm(build_supernet(space, with_gates=False), seed=seed).eval()
    blocks = space.router_blocks if deciding == "every" else space.router_blocks[:1]
    cfg = space.uniform_config(widest).with_routes({name: threshold for name in blocks})
    routers = _routers(space, seed=seed)
    routed = RoutedNetwork.build(supernet, routers, cfg)
    size = small_resolution(space)
    calibration = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(seed))
    routed.recalibrate(calibration, batch_size=16)
    return supernet, routers, cfg, _spread(routed, calibration)


# -- decisions ---------------------------------------------------------------------------------------------

def test_route_levels_takes_the_narrowest_sufficient_level_else_the_widest() -> None:
    logits = torch.tensor([[3.0, 3.0, 3.0], [-3.0, 0.1, -3.0], [-3.0, -3.0, 0.2], [-3.0, -3.0, -3.0], [0.0, 5.0, 5.0]])
    assert route_levels(logits, 0.5).tolist() == [0, 1, 2, 3, 0]  # sigmoid(0) = 0.5 reaches 0.5
    assert route_levels(logits, 0.9).tolist() == [0, 3, 3, 3, 1]


def test_the_logit_rule_is_the_probability_rule() -> None:
    """logit >= log(t / (1 - t)) decides as sigmoid(logit) >= t wherever the probability is not within float32
    rounding of the threshold; the threshold's logit is a float32 number."""
    logits = torch.linspace(-8.0, 8.0, 40001)
    for threshold in (0.05, 0.2, 0.4583271601004407, 0.5, 0.7625525342743981, 0.95):
        probability = torch.sigmoid(logits.double())
        clear = (probability - threshold).abs() > 1e-6
        by_logit = logits >= logit_threshold(threshold)
        assert torch.equal(by_logit[clear], (probability >= threshold)[clear])
        assert logit_threshold(threshold) == float(torch.tensor(logit_threshold(threshold), dtype=torch.float32))
    assert logit_threshold(0.5) == 0.0
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(RoutingError, match="not a probability"):
            logit_threshold(bad)


def test_a_higher_threshold_never_takes_a_narrower_level() -> None:
    logits = torch.randn(500, 3) * 3
    previous = route_levels(logits, 0.05)
    for threshold in np.linspace(0.1, 0.95, 12):
        current = route_levels(logits, float(threshold))
        assert (current >= previous).all()
        previous = current


@pytest.mark.parametrize("levels", [[1.0], [0.5, 0.25, 1.0], [0.25, 0.5], [0.0, 1.0], [0.5, 0.5, 1.0]])
def test_bad_levels_are_refused_in_one_line(levels: list[float]) -> None:
    with pytest.raises(RoutingError, match=r"^routing.levels: .* expected two or more ascending"):
        check_levels(levels)


def test_vit_spaces_have_no_routers() -> None:
    with pytest.raises(RoutingError, match="has no router blocks"):
        RouterSet(get_space("vit_test"))


def test_route_thresholds_are_validated_against_the_space() -> None:
    space = get_space("small")
    cfg = space.max_config()
    with pytest.raises(ConfigError, match=r"route_thresholds\['layer2.0'\]: 1.5 is out of range"):
        space.validate(cfg.with_routes({"layer2.0": 1.5, "layer3.0": 0.5}))
    with pytest.raises(ConfigError, match=r"^route_thresholds\['layer2.0'\]: missing; the first router decides"):
        space.validate(cfg.with_routes({"layer3.0": 0.5}))
    space.validate(cfg.with_routes({"layer2.0": 0.5}))  # later routers may be left out: the first decides for them
    with pytest.raises(ConfigError, match=r"route_thresholds\['layer1.0'\]: not a router block"):
        space.validate(cfg.with_routes({"layer1.0": 0.5, "layer2.0": 0.5, "layer3.0": 0.5}))
    with pytest.raises(ConfigError, match="route_thresholds: a routed config runs whole slices"):
        SubnetConfig(cfg.space, dict(cfg.channels), {"layer1.0": 0.5}, 32, {"layer2.0": 0.5})


def test_a_routed_config_round_trips_through_json_and_static_ones_read_as_before() -> None:
    space = get_space("small")
    routed = space.max_config().with_routes({"layer2.0": 0.3, "layer3.0": 0.7})
    assert SubnetConfig.from_json(routed.to_json()) == routed and routed.kind == "routed"
    static = space.max_config()
    assert "route_thresholds" not in static.to_dict() and static.kind == "static"
    assert routed.static() == static and routed.key() != static.key()


def test_route_widths_slice_each_group_and_never_exceed_the_widest_route() -> None:
    space = get_space("small")
    cfg = space.uniform_config(0.5)
    route = space.route_widths(cfg, {"layer2.0": 0.25, "layer3.0": 1.0})
    assert route.channels["layer2.0.conv1"] == 16 and route.channels["layer2.0.conv2"] == 16
    assert route.channels["layer3.0.conv1"] == cfg.channels["layer3.0.conv1"] == 64  # capped by the config
    assert route.channels["conv1"] == cfg.channels["conv1"]  # before the first router: the config's
    space.validate(route)


# -- execution ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["basic", "small", "bottleneck", "inverted_residual"])
def test_segments_compose_to_the_network(family: str) -> None:
    space = _spaces()[family]
    net = randomize_batchnorm(build_supernet(space, with_gates=False)).eval()
    cfg = space.sample(np.random.default_rng(1))
    sub = net.extract(cfg).eval()
    x = torch.randn(3, 3, small_resolution(space), small_resolution(space))
    hidden = x
    for segment in segments_of(sub, space):
        hidden = segment(hidden)
    torch.testing.assert_close(torch.flatten(nn.functional.adaptive_avg_pool2d(hidden, 1), 1), sub(x))


@pytest.mark.parametrize("family,deciding", [("basic", "every"), ("small", "every"), ("bottleneck", "every"),
                                             ("inverted_residual", "every"), ("small", "first"),
                                             ("inverted_residual", "first")])
def test_a_routed_input_runs_exactly_the_static_subnetwork_of_its_route(family: str, deciding: str) -> None:
    space = _spaces()[family]
    supernet, routers, cfg, routed = _routed(space, deciding=deciding)
    size = small_resolution(space)
    images = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(0))  # the calibration images
    seen = set()
    with torch.no_grad():
        for image in torch.randn(12, 3, size, size).split(1):
            features = routed(image)
            levels = tuple(routed.last_levels[0].tolist())
            seen.add(levels)
            static = recalibrate_bn(supernet.extract(routed.route_config(levels)), images, 64, batch_size=16)
            expected = static(image)
            assert features.shape == (1, routed.feature_dim)
            torch.testing.assert_close(features[:, : expected.shape[1]], expected, rtol=1e-5, atol=1e-5)
            assert (features[:, expected.shape[1]:] == 0).all()
    assert len(seen) > 1, "the test routers should send these inputs down more than one route"
    if deciding == "first":  # one decision: every group at the level the first router chose
        assert all(len(set(route)) == 1 for route in seen)


@pytest.mark.parametrize("family,deciding", [("small", "every"), ("inverted_residual", "every"),
                                             ("small", "first")])
def test_a_batch_runs_as_groups_and_equals_each_input_alone(family: str, deciding: str) -> None:
    space = _spaces()[family]
    _, _, _, routed = _routed(space, seed=2, deciding=deciding)
    size = small_resolution(space)
    images = torch.randn(24, 3, size, size)
    with torch.no_grad():
        batched = routed(images)
        levels = routed.last_levels.clone()
        alone = torch.cat([routed(image) for image in images.split(1)])
        alone_levels = torch.cat([routed.last_levels for image in images.split(1) if routed(image) is not None])
    assert len({tuple(row) for row in levels.tolist()}) > 1
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    assert torch.equal(levels, alone_levels)


@pytest.mark.parametrize("family", ["small", "inverted_residual"])
def test_each_head_decides_as_its_router(family: str) -> None:
    """A routed network's heads (the pool as a product with a 1/HW vector, the first layer pre-sliced) give the
    logits of the router they copy, on what enters their block at the config's resolution, at batch 1 and 5;
    another spatial size (pooled by ``mean``) too."""
    space = _spaces()[family]
    supernet, routers, cfg, _ = _routed(space, seed=4)
    routed = RoutedNetwork.build(supernet, routers, cfg)  # not spread: the heads are the routers' copies
    size = cfg.resolution
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for route in routed.routes():
            for depth, (head, entering) in enumerate(zip(routed.router_heads(route), routed.router_inputs(images, route))):
                router = routers.router(routed.router_blocks[depth])
                assert head.mean_weights.shape == (entering.shape[2] * entering.shape[3],)
                for x in (entering[:1], entering, entering[:, :, 1:, 1:]):
                    torch.testing.assert_close(head(x), router(x), rtol=1e-5, atol=1e-6)
                    assert head.decide_one(x[:1]) == head(x[:1])[0].tolist()  # the host path decides as forward


def test_branches_with_equal_widths_share_weights_but_not_statistics() -> None:
    space = get_space("small")
    _, _, _, routed = _routed(space)
    later = {route: key for route, key in routed.branch_of.items() if len(route) == 2}
    first = routed.branches[later[(0, 2)]]
    second = routed.branches[later[(2, 2)]]  # layer3 at full width behind a narrow and a wide layer2
    conv_a = next(m for m in first.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1))
    conv_b = next(m for m in second.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1))
    assert conv_a.weight is conv_b.weight
    norm_a = [m for m in first.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    norm_b = [m for m in second.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    assert not torch.allclose(norm_a.running_mean, norm_b.running_mean)


def test_a_capped_config_builds_one_branch_per_distinct_width() -> None:
    space = get_space("small")
    supernet = build_supernet(space, with_gates=False).eval()
    cfg = space.min_config().with_routes({name: 0.5 for name in space.router_blocks})
    routed = RoutedNetwork.build(supernet, _routers(space), cfg)
    assert len(routed.branches) == 2  # every level is the narrowest width: one branch per router group
    assert len(routed.branch_of) == 3 + 9


def test_with_the_first_router_alone_one_decision_sets_every_group() -> None:
    """Only the first router runs (one head per input width it receives); only uniform routes are built and
    recalibrated, and each is a route of the network where every router decides."""
    space = get_space("small")
    supernet, routers, cfg, first = _routed(space, seed=5, deciding="first")
    every = RoutedNetwork.build(supernet, routers, cfg.with_routes(dict.fromkeys(space.router_blocks, 0.5)))
    size = small_resolution(space)
    calibration = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(5))
    every.recalibrate(calibration, batch_size=16)  # as _routed recalibrated ``first``
    assert [first.decides(depth) for depth in range(2)] == [True, False]
    assert first.thresholds == (0.5, None) and first.logit_thresholds == (0.0, None)
    assert first.routes() == [(0, 0), (1, 1), (2, 2)] and set(first.branch_of) == {(0,), (1,), (2,), (0, 0), (1, 1), (2, 2)}
    assert all(key.startswith("router_layer2_0_in") for key in first.heads) and len(first.heads) == 1
    assert all(len(first.router_heads(route)) == 1 for route in first.routes())
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for route in first.routes():  # the same weights and statistics as the fully routed network's route
            torch.testing.assert_close(first.route_features(images, route), every.route_features(images, route),
                                       rtol=1e-5, atol=1e-5)


def test_routers_of_another_space_are_refused() -> None:
    space = get_space("small")
    supernet = build_supernet(space, with_gates=False)
    cfg = space.max_config().with_routes({name: 0.5 for name in space.router_blocks})
    with pytest.raises(RoutingError, match="do not fit the small supernet"):
        RoutedNetwork.build(supernet, RouterSet(get_space("tiny")), cfg)


# -- label-free targets --------------------------------------------------------------------------------------

def test_instance_agreement_by_hand() -> None:
    from supernet.losses.routing import instance_agreement

    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    embeddings = torch.tensor([[2.0, 0.1, 0.0],   # nearest to its own target (scale does not matter)
                               [0.9, 0.8, 0.0],   # nearer to image 0's target than to its own
                               [0.0, 0.5, 0.5]])  # tied between images 1 and 2: the lower index wins, so no
    assert instance_agreement(embeddings, targets).tolist() == [True, False, False]


def test_route_targets_mark_each_narrower_level_that_still_agrees() -> None:
    from supernet.losses.routing import route_targets, router_loss

    teacher = torch.eye(4)
    narrow = torch.tensor([[1.0, 0.2, 0, 0], [0.9, 0.3, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.8, 0.7]])  # agrees on 0, 2
    middle = torch.tensor([[1.0, 0, 0, 0], [0.2, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.6, 0.7]])  # agrees on all
    widest = teacher.clone()
    targets = route_targets([narrow, middle, widest], teacher)
    assert targets.tolist() == [[1, 1], [0, 1], [1, 1], [0, 1]]
    logits = torch.tensor([[2.0, 0.0], [-1.0, 3.0], [0.0, 0.0], [1.0, -1.0]])
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    torch.testing.assert_close(router_loss(logits, targets), expected)
