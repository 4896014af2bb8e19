"""Fixtures for the search tests: a tiny trained supernet, small fast search requests, an oracle over the
supernet and a static and a gated config of it (the export tests)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from nas.budget import parse_budget
from nas.settings import load_search_settings
from nas.study.oracle import build_oracle
from nas.study.run import SearchRequest
from search_spaces import SubnetConfig
from supernet.io.checkpoint import load_supernet
from supernet.nn.models import SuperNet
from supernet.train import load_train_settings
from supernet.training import train

TINY_RESOLUTION = 16  # tiny_checkpoint's training resolution

# Oracle and cost settings small enough for CPU tests (bank, calibration, latency repeats).
SMALL_SEARCH_OVERRIDES = [
    "oracle.bank_size=200", "oracle.calibration_images=128", "latency.repeats=3", "latency.warmup=1",
    "latency.warmup_seconds=0", "latency.timed_seconds=0", "effective_flops_images=64",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny`` supernet trained for 2 steps at 16 px on 256 MNIST images (holdout 200)."""
    out_dir = tmp_path_factory.mktemp("tiny_supernet")
    overrides = [
        "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=256", "data.holdout_size=200", f"data.resolution={TINY_RESOLUTION}", "batch_size=32",
        "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=64", "ssl.pred_hidden_dim=64", "ssl.proj_dim=32",
        "epochs=1", "max_steps=2", f"out_dir={out_dir}",
    ]
    train(load_train_settings(overrides))
    checkpoint = out_dir / "checkpoint.pt"
    assert checkpoint.is_file()
    return checkpoint


@pytest.fixture(scope="session")
def search_overrides() -> list[str]:
    """``key=value`` settings for ``python -m nas.search`` that keep a test run small."""
    return list(SMALL_SEARCH_OVERRIDES)


@pytest.fixture(scope="session")
def make_request() -> Callable[..., SearchRequest]:
    """Factory of :class:`nas.study.run.SearchRequest` with small oracle settings and no progress bar."""

    def build(
        checkpoint: Path,
        out: Path,
        *,
        budget: str | None = "3MFLOPs",
        trials: int = 6,
        sampler: str = "nsga2",
        study_name: str | None = None,
        seed: int = 0,
        overrides: tuple[str, ...] = (),
    ) -> SearchRequest:
        parsed = parse_budget(budget) if budget is not None else None
        flops_budget = parsed if parsed is not None and parsed.kind == "flops" else None
        latency_budget = parsed if parsed is not None and parsed.kind == "latency" else None
        return SearchRequest(
            checkpoint=Path(checkpoint), flops_budget=flops_budget, latency_budget=latency_budget,
            objective="latency" if latency_budget is not None else "flops", sampler=sampler, trials=trials,
            timeout=None, device="cpu", storage=None, study_name=study_name, seed=seed, out=Path(out),
            settings=load_search_settings([*SMALL_SEARCH_OVERRIDES, *overrides]), progress=False,
        )

    return build



def oracle_settings(overrides: list[str]):
    """The data and oracle settings of ``configs/search.yaml`` with ``overrides``."""
    settings = load_search_settings(overrides)
    return settings.data, settings.oracle


def gate_thresholds_that_drop_channels(supernet: SuperNet, cfg: SubnetConfig, images: torch.Tensor) -> dict[str, float]:
    """Per gated block, a threshold halfway between the two middle keep-probabilities over ``images``,
    so about half the channels are dropped and no probability sits on the threshold."""
    net = copy.deepcopy(supernet).eval()
    net.set_active(cfg)
    inputs: dict[str, torch.Tensor] = {}
    blocks = dict(net.named_modules())
    handles = [blocks[b.name].register_forward_pre_hook(lambda m, a, name=b.name: inputs.__setitem__(name, a[0]))
               for b in net.space.gated_blocks]
    with torch.no_grad():
        net(images)
        thresholds = {}
        for name, x in inputs.items():
            probabilities = torch.sigmoid(blocks[name].gate.logits(x)).flatten().sort().values
            middle = probabilities.numel() // 2
            thresholds[name] = float(probabilities[middle - 1 : middle + 1].mean().clamp(0.1, 0.9))
    for handle in handles:
        handle.remove()
    return thresholds


@pytest.fixture(scope="module")
def oracle_and_supernet(tiny_checkpoint: Path, search_overrides: list[str]):
    """The tiny supernet (eval mode) and an oracle over it with the small search settings."""
    supernet, payload = load_supernet(tiny_checkpoint)
    supernet.eval()
    return build_oracle(supernet, payload, *oracle_settings(search_overrides), "cpu"), supernet


@pytest.fixture(scope="module")
def configs(oracle_and_supernet) -> dict[str, SubnetConfig]:
    """A static config and a gated one whose thresholds drop about half the channels."""
    oracle, supernet = oracle_and_supernet
    space = supernet.space
    static = SubnetConfig(space.name, dict(space.uniform_config(0.5).channels), None, TINY_RESOLUTION)
    widths = SubnetConfig(space.name, dict(space.uniform_config(0.75).channels), None, TINY_RESOLUTION)
    thresholds = gate_thresholds_that_drop_channels(supernet, widths, oracle.data.calibration[:64])
    return {"gates_off": static, "gates_on": widths.with_gates(thresholds)}


@pytest.fixture(scope="session")
def routed_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` trained as :func:`tiny_checkpoint`, then its width routers (levels 0.25/0.5/1.0) for one epoch."""
    out_dir = tmp_path_factory.mktemp("tiny_routed")
    overrides = [
        "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=256", "data.holdout_size=200", f"data.resolution={TINY_RESOLUTION}",
        "batch_size=32", "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=64", "ssl.pred_hidden_dim=64",
        "ssl.proj_dim=32", "epochs=1", "max_steps=2", f"out_dir={out_dir}", "routing.enabled=true",
        "routing.hidden_channels=16",
    ]
    train(load_train_settings(overrides))
    return out_dir / "checkpoint.pt"


def routed_config_that_splits(oracle, supernet: SuperNet, widths: SubnetConfig) -> SubnetConfig:
    """``widths`` routed with thresholds at which the oracle's validation images split over more than one route:
    each router's threshold halfway between the two middle probabilities of its narrowest level."""
    from supernet.nn.routing import RoutedNetwork

    space = supernet.space
    probe = RoutedNetwork.build(supernet, oracle.routers, widths.with_routes(dict.fromkeys(space.router_blocks, 0.5)))
    probe.recalibrate(oracle.data.calibration, batch_size=oracle.batch_size, seed=oracle.seed)
    images = oracle.data.val[:128]
    thresholds = {}
    with torch.no_grad():
        for depth, name in enumerate(space.router_blocks):
            widest = len(probe.levels) - 1
            entering = probe.entering(images, (widest,) * depth)
            logits = probe.head(depth, entering.shape[1])(entering)
            sorted_p = torch.sigmoid(logits[:, 0]).sort().values
            middle = sorted_p.numel() // 2
            low, high = space.route_threshold_range
            thresholds[name] = float(sorted_p[middle - 1 : middle + 1].mean().clamp(low, high))
    return widths.with_routes(thresholds)
