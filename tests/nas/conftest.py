"""Fixtures for the search tests: a tiny trained supernet and small, fast search requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nas.budget import parse_budget
from nas.search import SearchRequest
from nas.settings import load_search_settings
from supernet.train import load_train_settings
from supernet.training import train

# Oracle and cost settings small enough for CPU tests (bank, calibration, latency repeats).
SMALL_SEARCH_OVERRIDES = [
    "oracle.bank_size=200", "oracle.calibration_images=128", "latency.repeats=3", "latency.warmup=1",
    "effective_flops_images=64",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny`` supernet trained for 2 steps at 16 px on 256 MNIST images (holdout 200)."""
    out_dir = tmp_path_factory.mktemp("tiny_supernet")
    overrides = [
        "recipe=none", "model=tiny", "optim.lr=0.5", "data.max_images=256", "data.holdout_size=200", "data.resolution=16", "batch_size=32",
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
    """Factory of :class:`nas.search.SearchRequest` with small oracle settings and no progress bar."""

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
