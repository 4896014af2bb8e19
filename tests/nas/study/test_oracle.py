"""The oracle's scores and images (issue 23): every score kind from one embedding, kNN top-1 as before,
validation images drawn from the training split (never the held-out one), and a study that never mixes
score kinds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from nas.search import main
from nas.settings import load_search_settings
from nas.study.oracle import Oracle, build_oracle, judging_settings
from nas.study.run import search
from search_spaces import SubnetConfig, get_space
from supernet import build_supernet
from supernet.evaluation import EvalData, ImageBank, embed_tensor, knn_accuracy, linear_cka, linear_probe
from supernet.evaluation.scores import SCORE_KINDS, ImageScores
from supernet.io.checkpoint import load_supernet
from supernet.nn.routing import RouterSet
from tests.conftest import randomize_batchnorm, small_resolution
from tests.nas.conftest import TINY_RESOLUTION


def rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images}


@pytest.fixture(scope="module")
def built(tiny_checkpoint: Path, search_overrides: list[str]) -> tuple[Oracle, Any]:
    supernet, payload = load_supernet(tiny_checkpoint)
    settings = load_search_settings(search_overrides)
    return build_oracle(supernet.eval(), payload, settings.data, settings.oracle, "cpu"), (supernet, payload, settings)


def half_width(oracle: Oracle) -> SubnetConfig:
    space = oracle.supernet.space
    return SubnetConfig(space.name, dict(space.uniform_config(0.5).channels), None, TINY_RESOLUTION)


def test_the_oracle_selects_on_training_images_outside_the_bank(built) -> None:
    oracle, (supernet, payload, settings) = built
    data = oracle.data
    # the tiny run: 256 training images; 200 held out (its judging split), which the oracle never draws
    assert data.val_source == "train" and len(data.val) == len(data.bank) == 128
    assert not rows(data.val.pixels) & rows(data.bank.pixels)
    judge = build_oracle(supernet, payload, settings.data, judging_settings(settings.oracle), "cpu").data
    assert judge.val_source == "holdout" and len(judge.val) == 200
    assert not rows(data.val.pixels) & rows(judge.val.pixels)
    assert not rows(data.bank.pixels) & rows(judge.val.pixels) and not rows(data.calibration.pixels) & rows(judge.val.pixels)


def test_accuracy_is_knn_top1_and_every_kind_comes_from_the_same_features(built) -> None:
    oracle, _ = built
    cfg = half_width(oracle)
    network = oracle.subnet(cfg)
    bank = embed_tensor(network, oracle.data.bank, batch_size=64, device="cpu")
    val = embed_tensor(network, oracle.data.val, batch_size=64, device="cpu")
    expected = knn_accuracy(bank, oracle.data.bank_labels, val, oracle.data.val_labels,
                            num_classes=oracle.data.num_classes, k=oracle.k, temperature=oracle.temperature)
    scores = oracle.scores_of(cfg, network)
    assert set(scores) == set(SCORE_KINDS)
    assert oracle.accuracy(cfg, network) == scores["knn_top1"] == pytest.approx(expected)
    assert oracle.score_kind == "probe_top1" and oracle.score_of(cfg) == scores["probe_top1"]  # the default
    assert scores["knn_loglik"] < 0.0
    assert 0.0 < scores["knn_vote"] < 1.0 and 0.0 < scores["agreement"] <= 1.0
    assert scores["probe_top1"] == pytest.approx(linear_probe(bank, oracle.data.bank_labels, val, oracle.data.val_labels,
                                                              num_classes=oracle.data.num_classes, epochs=100,
                                                              seed=oracle.seed))
    assert scores["agreement"] == pytest.approx(linear_cka(val, oracle.full_features()))
    pieces = oracle.image_scores(cfg, network, classifier="knn")
    assert len(pieces) == len(oracle.data.val)
    assert float(pieces.log_likelihood.mean()) == pytest.approx(scores["knn_loglik"])
    # the same network scored afresh, uncached, gives the same numbers: nothing depends on call order
    assert oracle.network_scores(network, kinds=("knn_loglik", "probe_loglik")) == pytest.approx(
        {"knn_loglik": scores["knn_loglik"], "probe_loglik": scores["probe_loglik"]})


def test_the_full_network_agrees_with_itself(built) -> None:
    oracle, _ = built
    space = oracle.supernet.space
    full = SubnetConfig(space.name, dict(space.max_config().channels), None, TINY_RESOLUTION)
    assert oracle.scores_of(full, kinds=("agreement",))["agreement"] == pytest.approx(1.0)


def test_two_seeds_draw_two_oracles_and_one_seed_one(built) -> None:
    """``oracle.seed`` draws the bank and calibration images, ``oracle.val_seed`` the validation images."""
    oracle, (supernet, payload, settings) = built
    again = build_oracle(supernet, payload, settings.data, settings.oracle, "cpu")
    other = build_oracle(supernet, payload, settings.data, replace(settings.oracle, seed=1), "cpu")
    cfg = half_width(oracle)
    assert again.scores_of(cfg, kinds=("knn_loglik", "probe_loglik")) == oracle.scores_of(cfg, kinds=("knn_loglik",
                                                                                                      "probe_loglik"))
    # the tiny data's bank takes every training image outside the validation split: the seed orders it
    assert other.data.bank.pixels.tolist() != oracle.data.bank.pixels.tolist()
    assert rows(other.data.val.pixels) == rows(oracle.data.val.pixels)
    revalidated = build_oracle(supernet, payload, settings.data, replace(settings.oracle, val_seed=1), "cpu")
    assert rows(revalidated.data.val.pixels) != rows(oracle.data.val.pixels)


def test_a_forgotten_evaluator_measures_again_but_keeps_its_anchor(built, monkeypatch: pytest.MonkeyPatch) -> None:
    """``CandidateEvaluator.forget`` (what bench_oracle times a cold candidate with) drops the results and FLOP
    counts but not the latency anchor's figure, which a study times once."""
    import nas.latency.measure as measure
    from nas.study.candidates import CandidateEvaluator

    oracle, (supernet, _, settings) = built
    anchored = replace(settings.latency, anchor="on")
    evaluator = CandidateEvaluator(supernet, oracle, flops_budget=None, latency_budget=None, latency=anchored)
    timed = []
    original = measure.anchor_latency
    monkeypatch.setattr(measure, "anchor_latency", lambda *a, **k: timed.append(1) or original(*a, **k))
    cfg = half_width(oracle)
    first = evaluator.evaluate(cfg)
    assert evaluator.evaluate(cfg) is first and len(timed) == 1
    evaluator.forget()
    oracle.forget()
    again = evaluator.evaluate(cfg)
    assert again is not first and again.accuracy == first.accuracy and again.flops == first.flops
    assert len(timed) == 1, "the anchor is timed once per evaluator"


def test_the_bank_cache_is_bounded_in_bytes_and_keeps_the_newest(built, monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.study.oracle as oracle_module

    oracle, _ = built
    oracle.forget()
    monkeypatch.setattr(oracle_module, "BANK_CACHE_BYTES", 2 * 100 * 4)  # room for two banks of 100 floats
    space = oracle.supernet.space
    configs = [SubnetConfig(space.name, dict(space.uniform_config(w).channels), None, TINY_RESOLUTION)
               for w in (0.25, 0.5, 0.75)]
    for value, cfg in enumerate(configs):
        oracle.bank_features(cfg, lambda images, value=value: torch.full((25, 4), float(value)))
    assert list(oracle._banks) == [cfg.key() for cfg in configs[1:]]  # the oldest evicted
    kept = oracle.bank_features(configs[2], lambda images: pytest.fail("a cached bank is embedded again"))
    assert torch.equal(kept, torch.full((25, 4), 2.0))
    oracle.forget()


def test_an_unknown_score_is_refused(built) -> None:
    oracle, _ = built
    with pytest.raises(ValueError, match="unknown score 'loss'"):
        oracle.scores_of(half_width(oracle), kinds=("loss",))
    with pytest.raises(ValueError, match="score='loss'; expected one of knn_top1"):
        Oracle(oracle.supernet, oracle.data, score="loss")


def test_a_study_identity_holds_the_score_and_a_study_never_mixes_scores(
        tiny_checkpoint: Path, make_request: Callable[..., Any], search_overrides: list[str], tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    search(make_request(tiny_checkpoint, out, budget="3MFLOPs", trials=1, study_name="scored",
                        overrides=("oracle.score=knn_top1",)))
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    identity = optuna.load_study(study_name="scored", storage=storage).user_attrs["identity"]
    assert identity["oracle.score"] == "knn_top1" and identity["oracle.val_split"] == "train"
    before = [(t.number, t.state) for t in optuna.load_study(study_name="scored", storage=storage).trials]
    capfd.readouterr()
    code = main(["--checkpoint", str(tiny_checkpoint), "--budget", "3MFLOPs", "--trials", "2", "--study-name", "scored",
                 "--out", str(out), "--no-progress", *search_overrides, "oracle.score=probe_loglik"])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: oracle.score: study 'scored' was scored with 'knn_top1', this run asks for "
                             "'probe_loglik'"), err[0]
    assert [(t.number, t.state) for t in optuna.load_study(study_name="scored", storage=storage).trials] == before


def test_a_bad_score_setting_is_one_line(tiny_checkpoint: Path, search_overrides: list[str], tmp_path: Path,
                                         capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["--checkpoint", str(tiny_checkpoint), "--budget", "3MFLOPs", "--trials", "1", "--out",
                 str(tmp_path / "run"), "--no-progress", *search_overrides, "oracle.score=loss"])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: oracle.score: Invalid value 'loss'"), err
    assert "knn_loglik" in err[0] and not (tmp_path / "run").exists()


# -- routed configs: each validation image scored by its route's classifier ----------------------------
def routed_oracle() -> tuple[Oracle, SubnetConfig]:
    """The ``small`` space with random BatchNorm and random routers spread over their levels, on random images."""
    space = get_space("small")
    size = small_resolution(space)
    generator = torch.Generator().manual_seed(0)
    supernet = randomize_batchnorm(build_supernet(space, with_gates=False), seed=0).eval()
    routers = RouterSet(space, levels=(0.25, 0.5, 1.0), hidden_channels=16)
    with torch.no_grad():
        for router in routers.routers.values():
            router.fc1.weight.copy_(torch.randn(router.fc1.weight.shape, generator=generator))
            router.fc2.weight.copy_(torch.randn(router.fc2.weight.shape, generator=generator))

    def images(count: int) -> ImageBank:  # noise around a random grey level per image and channel
        level = torch.randint(40, 216, (count, 3, 1, 1), generator=generator)
        noise = torch.randint(-40, 40, (count, 3, size, size), generator=generator)
        return ImageBank((level + noise).to(torch.uint8))

    data = EvalData(images(64), images(96), torch.randint(0, 4, (96,), generator=generator), images(80),
                    torch.randint(0, 4, (80,), generator=generator), 4, size, "train")
    oracle = Oracle(supernet, data, k=5, batch_size=32, routers=routers, probe_epochs=20)
    cfg = space.uniform_config(1.0).with_routes({name: 0.5 for name in space.router_blocks})
    network = oracle.routed_network(cfg)
    with torch.no_grad():  # centre each router on the median of its logits: the images spread over the routes
        for depth, name in enumerate(network.router_blocks):
            router = routers.router(name)  # the oracle's: the routed networks it builds from now on have it
            router.fc2.bias.sub_(router(network.entering(data.val[:], (2,) * depth)).median(dim=0).values)
    return oracle, cfg


def test_a_routed_config_scores_each_image_by_its_route() -> None:
    oracle, cfg = routed_oracle()
    network = oracle.routed_network(cfg)
    scores = oracle.scores_of(cfg, network)
    routed = oracle.routed_score(cfg, network)
    assert len(routed.routes) > 1, "the test routers should spread the images over several routes"
    assert sum(share.images for share in routed.routes) == len(oracle.data.val)
    assert oracle.accuracy(cfg, network) == routed.accuracy == scores["knn_top1"]
    # reference: each route's static sub-network alone (extracted, recalibrated), its kNN answer on the images
    # the routed network sent down that route
    with torch.no_grad():
        network(oracle.data.val[:])
        routes = network.last_levels.clone()
    parts = []
    for share in routed.routes:
        rows = (routes == torch.tensor(share.levels)).all(dim=1)
        static = oracle.subnet(network.route_config(share.levels))
        parts.append((rows, oracle.image_scores(None, static, classifier="knn")))
    expected = ImageScores.scatter([(rows, ImageScores(*(getattr(part, name)[rows] for name in
                                                         ("correct", "probability", "log_likelihood"))))
                                    for rows, part in parts], len(routes))
    pieces = oracle.image_scores(cfg, network, classifier="knn")
    torch.testing.assert_close(pieces.log_likelihood, expected.log_likelihood, rtol=1e-4, atol=1e-4)
    assert float(pieces.correct.double().mean()) == pytest.approx(float(expected.correct.double().mean()), abs=0.02)
    assert scores["knn_loglik"] == pytest.approx(float(expected.log_likelihood.mean()), abs=1e-4)
    assert all(torch.isfinite(torch.tensor(value)) for value in scores.values())
