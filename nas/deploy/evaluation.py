"""The accuracies a paper reports (``python -m nas.evaluate`` is the command line), for one sub-network (or, with the
switchable probe, for the uniform widths of one supernet), each beside the same architecture untrained
(the supernet's initial weights, BatchNorm recalibrated the same way) and, where it applies, raw
pixels (the flattened images as features).

``--protocol`` (or ``probe.protocol``) chooses what is measured:

* ``fast`` (default): two evaluations of the same frozen, pooled, cached features (no augmentation):
  weighted kNN top-1 (cosine, k = 20, T = 0.07; Wu et al. 2018, as in DINO) with the oracle's
  labeled bank voting for each held-out image, and a logistic-regression probe fitted on the same
  bank (standardised features, full-batch L-BFGS, L2 on the weights; :func:`supernet.evaluation.linear_probe`);
* ``linear``: standard linear evaluation (SimCLR, BYOL, MoCo v3, DINO): frozen encoder, a linear head
  on a non-affine BatchNorm trained by SGD on random-resized crops and flips of the whole labelled
  training split (``probe.linear.*``; :func:`supernet.evaluation.linear_evaluation`);
* ``switchable``: SlimCLR's switchable linear probe, one head per uniform width of the supernet of
  ``--checkpoint``, trained jointly (``probe.switchable.*``; :mod:`supernet.evaluation.switchable`);
* ``semi``: SSLight's semi-supervised evaluation, the sub-network fine-tuned with a linear head on a
  class-balanced 1 % and 10 % of the training labels (``probe.semi.*``; :mod:`supernet.evaluation.semi`).

The sub-network is an export directory (``--export DIR``: rebuilt from ``subnet.json`` and
``weights.pt``, whose BatchNorm statistics were recalibrated at export, so no checkpoint is needed)
or a config (``--config JSON [--checkpoint CKPT]``: extracted from the supernet and recalibrated as
the search does it). Data: the data set the supernet was trained on, split and sized by the
``data.*`` and ``oracle.*`` settings of configs/search.yaml (``probe.train_images`` for the training
split of the trained-head protocols); the protocols by ``probe.*``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.cost import measure_costs
from nas.deploy.program import load_exported
from nas.deploy.sources import check_fits, source_from_config
from nas.settings import ProbeProtocol, SearchSettings
from nas.study.oracle import build_eval_data, build_oracle, judging_settings, trained_data_settings
from nas.study.storage import SearchError
from search_spaces import SubnetConfig, get_space
from supernet.devices import resolve_device
from supernet.evaluation import (
    EvalData,
    ProtocolReport,
    ProtocolScore,
    embed_tensor,
    knn_accuracy,
    linear_evaluation,
    linear_probe,
    raw_pixel_knn,
    raw_pixel_linear_evaluation,
    raw_pixel_probe,
    raw_pixel_semi_supervised,
    scaled_lr,
    semi_supervised_evaluation,
    switchable_linear_probe,
    untrained_network,
    untrained_supernet,
    width_networks,
)
from supernet.evaluation.settings import KnnSettings
from supernet.io.checkpoint import find_latest_checkpoint, load_supernet
from supernet.nn.bn import recalibrate_bn
from supernet.nn.flops import FLOP_CONVENTION, count_flops, count_params
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet
from supernet.settings import SettingsError, settings_dict

__all__ = ["EvaluateRequest", "baseline_scores", "eval_data_settings", "evaluate", "evaluate_network",
           "evaluate_switchable", "evaluate_trained_head", "frozen_scores"]


@dataclass
class EvaluateRequest:
    export_dir: Path | None
    config: Path | None
    checkpoint: Path | None
    device: str
    settings: SearchSettings  # settings.probe.protocol says what is measured


def evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """The requested protocol's top-1 (in [0, 1]) beside its baselines, with FLOPs and parameters."""
    device = resolve_device(request.device, key="--device")
    settings = request.settings
    protocol = _protocol(settings)
    _check_source(request, protocol)
    if protocol == "switchable":
        return evaluate_switchable(_checkpoint(request), settings, device)
    data_settings = eval_data_settings(settings)
    if request.export_dir is not None:
        network, record = load_exported(request.export_dir)
        cfg = network.source_config
        assert cfg is not None
        trained = record.get("data") or {}
        data = build_eval_data(trained, settings.data, data_settings, default_resolution=get_space(cfg.space).default_resolution)
        network = network.to(device).eval()
        source = {"export": str(request.export_dir)}
        seed, with_gates = int(trained.get("seed", 0)), bool(record.get("with_gates", True))
        options = GateOptions(**record.get("gate_options", {}))
    else:
        assert request.config is not None
        cfg = source_from_config(request.config).config
        checkpoint = _checkpoint(request)
        network, data, seed, with_gates, options = _extract(cfg, checkpoint, request.config, settings, data_settings,
                                                            device)
        source = {"config": str(request.config), "checkpoint": str(checkpoint.resolve())}
    untrained = untrained_network(cfg, seed=seed, with_gates=with_gates, gate_options=options)
    if protocol == "fast":
        result = evaluate_network(network, cfg, data, settings, device, untrained=untrained)
    else:
        result = evaluate_trained_head(protocol, network, cfg, data, settings, device, untrained=untrained)
    return {**result, "source": source}


def _protocol(settings: SearchSettings) -> str:
    return ProbeProtocol(settings.probe.protocol).value


def _check_source(request: EvaluateRequest, protocol: str) -> None:
    if protocol == "switchable":
        if request.export_dir is not None or request.config is not None:
            raise SearchError(f"--{'export' if request.export_dir is not None else 'config'}: the switchable probe "
                              "evaluates the uniform widths probe.switchable.widths of a whole supernet; pass only "
                              "--checkpoint CKPT")
    elif request.export_dir is None and request.config is None:
        raise SearchError(f"--protocol {protocol}: say which sub-network, with --export DIR or --config JSON "
                          "[--checkpoint CKPT]")
    if protocol == "semi" and len(request.settings.probe.semi.epochs) != len(request.settings.probe.semi.fractions):
        semi = request.settings.probe.semi
        raise SettingsError(f"probe.semi.epochs: {list(semi.epochs)} has {len(semi.epochs)} entries for "
                            f"{len(semi.fractions)} fractions {list(semi.fractions)}; expected one per fraction")


def _checkpoint(request: EvaluateRequest) -> Path:
    checkpoint = request.checkpoint or find_latest_checkpoint(".")
    if checkpoint is None:
        raise SearchError("--checkpoint: no checkpoint.pt under the current directory; pass --checkpoint PATH")
    return Path(checkpoint)


def eval_data_settings(settings: SearchSettings) -> KnnSettings:
    """How the evaluation images are drawn: the oracle's calibration and bank, scored on the whole held-out split
    (what judges a network, never the images the search selected on: :func:`nas.study.oracle.judging_settings`);
    for the trained-head protocols ``probe.train_images`` labelled training images (null: the whole training
    split) instead of the oracle's bank."""
    if _protocol(settings) == "fast":
        return judging_settings(settings.oracle)
    return judging_settings(settings.oracle, train_images=settings.probe.train_images or sys.maxsize)


def _extract(cfg: SubnetConfig, checkpoint: Path, where: Path, settings: SearchSettings, data_settings: KnnSettings,
             device: torch.device) -> tuple[SuperNet, EvalData, int, bool, GateOptions]:
    supernet, payload = load_supernet(checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    check_fits(cfg, supernet, where=str(where), checkpoint=checkpoint)
    oracle = build_oracle(supernet, payload, settings.data, data_settings, device)
    seed = int(trained_data_settings(payload)["seed"])
    return oracle.subnet(cfg).eval(), oracle.data, seed, supernet.with_gates, supernet.gate_options


def frozen_scores(network: SuperNet, data: EvalData, settings: SearchSettings, device: torch.device) -> dict[str, float]:
    """kNN and linear-probe top-1 of a ready (recalibrated, eval-mode) network's pooled features."""
    oracle, probe = settings.oracle, settings.probe
    network.set_gate_mode("masked")  # batched embedding; gathered mode is batch 1 only
    bank = embed_tensor(network, data.bank, batch_size=oracle.batch_size, device=device)
    val = embed_tensor(network, data.val, batch_size=oracle.batch_size, device=device)
    return {
        "knn": knn_accuracy(bank, data.bank_labels, val, data.val_labels, num_classes=data.num_classes, k=oracle.k,
                            temperature=oracle.temperature),
        "linear_probe": linear_probe(bank, data.bank_labels, val, data.val_labels, num_classes=data.num_classes,
                                     epochs=probe.epochs, lr=probe.lr, weight_decay=probe.weight_decay, seed=probe.seed),
    }


def baseline_scores(untrained: SuperNet, data: EvalData, settings: SearchSettings,
                    device: torch.device) -> dict[str, dict[str, float | None]]:
    """The untrained twin (BN recalibrated as the oracle does) and raw pixels."""
    oracle, probe = settings.oracle, settings.probe
    untrained = untrained.to(device)
    recalibrate_bn(untrained, data.calibration, len(data.calibration), batch_size=oracle.batch_size, seed=oracle.seed,
                   device=device)
    return {
        "untrained": frozen_scores(untrained.eval(), data, settings, device),
        "raw_pixels": {"knn": raw_pixel_knn(data, k=oracle.k, temperature=oracle.temperature),
                       "linear_probe": raw_pixel_probe(data, epochs=probe.epochs, lr=probe.lr,
                                                       weight_decay=probe.weight_decay, seed=probe.seed)},
    }


def evaluate_network(network: SuperNet, cfg: SubnetConfig, data: EvalData, settings: SearchSettings,
                     device: torch.device, *, untrained: SuperNet) -> dict[str, Any]:
    """Both frozen-feature accuracies of a ready network beside its baselines (``untrained``: the same
    sub-network at the supernet's initial weights, :func:`supernet.evaluation.untrained_network`), with its costs."""
    oracle, probe = settings.oracle, settings.probe
    scores = frozen_scores(network, data, settings, device)
    costs = measure_costs(network, cfg, data.calibration[: settings.effective_flops_images], resolution=data.resolution,
                          batch_size=oracle.batch_size, device=device)
    return {
        **scores,
        "baselines": baseline_scores(untrained, data, settings, device),
        "config": cfg.to_dict(),
        **costs.to_dict(),
        "resolution": data.resolution,
        "flop_convention": FLOP_CONVENTION,
        "protocol": {
            "name": "fast",
            "features": f"pooled, frozen, {network.feature_dim} dimensions",
            "train_images": len(data.bank),
            "test_images": len(data.val),
            "test_split": data.val_source,
            "num_classes": data.num_classes,
            "knn": {"k": oracle.k, "temperature": oracle.temperature, "similarity": "cosine"},
            "linear_probe": {"optimizer": "full-batch L-BFGS", "features": "standardised (train mean and std)",
                             "epochs": probe.epochs, "lr": probe.lr, "weight_decay": probe.weight_decay,
                             "seed": probe.seed},
            "untrained": "the supernet's initial weights (same seed and settings), BN recalibrated like the trained network",
        },
    }


# -- the protocols that train a head ----------------------------------------------------------------
LINEAR = ("standard linear evaluation: frozen encoder (eval mode, BatchNorm statistics fixed), a linear head (on "
          "BatchNorm1d without affine parameters when head_norm), SGD, random-resized crop + horizontal flip")
LINEAR_SOURCE = ("SimCLR (Chen et al. 2020), BYOL (Grill et al. 2020), MoCo v3 (Chen et al. 2021), DINO (Caron et al. "
                 "2021); head BatchNorm as MoCo v3 and MAE; 100 epochs as DINO and US3L's CIFAR evaluation")
SWITCHABLE = ("SlimCLR's switchable linear probe: one linear head per uniform width of the frozen supernet (each width "
              "extracted and BN-recalibrated), all trained on the same batches, losses summed; top-1 per width")
SWITCHABLE_SOURCE = ("SlimCLR (Zhao et al. 2023), main_ssl_lincls.py --slim_fc supervised_switch --inplace_distill 1 "
                     "--inplace_distill_mixed 1 (narrower heads: 0.5 CE + 0.5 distillation from the widest head)")
SEMI = ("SSLight's semi-supervised evaluation: the sub-network fine-tuned (train mode) with a linear head on a "
        "class-balanced, seeded subset of the training labels, scored on the test split")
SEMI_SOURCE = ("SSLight (Liu et al. ICLR 2023), classification/config/exp_yamls/dino/dino_r18_semi.yaml and "
               "experiments/dino/resnet18/semi_{1,10}per.sh")
SEMI_NOTE = ("SSLight's head starts from the pre-trained projector's first two layers plus a new linear layer; a "
             "sub-network has no projector, so the head here is linear")
SEMI_SUBSETS = ("labelled subsets: the same number of images from every class, max(1, round(fraction x train_images "
                "/ classes)), drawn with probe.seed")
SGD = {"optimizer": "SGD", "schedule": "cosine per step from lr to 0, no warm-up", "lr_rule": "base_lr x batch_size / 256"}


def _features(augment: bool, *, finetuned: bool = False) -> str:
    if finetuned:
        return "recomputed every step (the network trains)" + (" from augmented uint8 images" if augment else "")
    if augment:
        return ("recomputed every step from freshly augmented uint8 images (augmentation means features cannot be "
                "cached): one encoder pass over the training split per epoch")
    return "center crops embedded once and cached (augment=false)"


def _untrained_ready(untrained: SuperNet, data: EvalData, settings: SearchSettings, device: torch.device) -> SuperNet:
    untrained = untrained.to(device)
    recalibrate_bn(untrained, data.calibration, len(data.calibration), batch_size=settings.oracle.batch_size,
                   seed=settings.oracle.seed, device=device)
    return untrained.eval()


def evaluate_trained_head(protocol: str, network: SuperNet, cfg: SubnetConfig, data: EvalData, settings: SearchSettings,
                          device: torch.device, *, untrained: SuperNet) -> dict[str, Any]:
    """``linear`` or ``semi`` top-1 of a ready network beside the untrained twin and raw pixels, with its costs."""
    probe = settings.probe
    network.set_gate_mode("masked")
    costs = measure_costs(network, cfg, data.calibration[: settings.effective_flops_images], resolution=data.resolution,
                          batch_size=settings.oracle.batch_size, device=device)
    untrained = _untrained_ready(untrained, data, settings, device)
    if protocol == "linear":
        linear = probe.linear
        run = {"settings": linear, "seed": probe.seed, "device": device}
        top1 = linear_evaluation(network, data, **run)
        scores: tuple[ProtocolScore, ...] = (ProtocolScore(
            "linear", top1, linear_evaluation(untrained, data, **run), raw_pixel_linear_evaluation(data, **run),
            len(data.bank)),)
        report = ProtocolReport(
            name="linear", description=LINEAR, source=LINEAR_SOURCE,
            hyperparameters={**settings_dict(linear), "lr": scaled_lr(linear.base_lr, linear.batch_size),
                             **SGD, "seed": probe.seed},
            features=_features(linear.augment), train_images=len(data.bank), test_images=len(data.val),
            test_split=data.val_source, num_classes=data.num_classes, scores=scores)
    else:
        semi = probe.semi
        run = {"settings": semi, "seed": probe.seed, "device": device}
        trained_scores = semi_supervised_evaluation(network, data, **run)
        untrained_scores = semi_supervised_evaluation(untrained, data, **run)
        raw_scores = raw_pixel_semi_supervised(data, **run)
        scores = tuple(
            ProtocolScore(f"{score.fraction * 100:g}% labels", score.top1, twin.top1,
                          None if raw_scores is None else raw_scores[i].top1, score.labelled_images)
            for i, (score, twin) in enumerate(zip(trained_scores, untrained_scores)))
        lr = scaled_lr(semi.base_lr, semi.batch_size)
        report = ProtocolReport(
            name="semi", description=SEMI, source=SEMI_SOURCE,
            hyperparameters={**settings_dict(semi), "lr": lr, "backbone_lr": lr * semi.backbone_lr_scale,
                             **SGD, "seed": probe.seed},
            features=_features(semi.augment, finetuned=True), train_images=len(data.bank),
            test_images=len(data.val), test_split=data.val_source, num_classes=data.num_classes, scores=scores,
            notes=(SEMI_NOTE, SEMI_SUBSETS))
    return {**report.to_dict(), "config": cfg.to_dict(), **costs.to_dict(), "resolution": data.resolution,
            "flop_convention": FLOP_CONVENTION}


def evaluate_switchable(checkpoint: Path, settings: SearchSettings, device: torch.device) -> dict[str, Any]:
    """SlimCLR's switchable probe on the supernet of ``checkpoint``: top-1 per uniform width beside the
    untrained supernet's same widths, each width's FLOPs and parameters."""
    supernet, payload = load_supernet(checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    trained_data = trained_data_settings(payload)
    data = build_eval_data(trained_data, settings.data, eval_data_settings(settings),
                           default_resolution=supernet.space.default_resolution)
    oracle, probe, switchable = settings.oracle, settings.probe, settings.probe.switchable
    space = supernet.space.name
    ready = {"batch_size": oracle.batch_size, "seed": oracle.seed, "device": device}
    trained = width_networks(supernet, switchable.widths, data, **ready)
    twin = untrained_supernet(supernet.space, seed=int(trained_data["seed"]), with_gates=supernet.with_gates,
                              gate_options=supernet.gate_options)
    untrained = width_networks(twin, switchable.widths, data, **ready)
    del supernet, twin  # the width networks hold copies of what they need
    run = {"settings": switchable, "seed": probe.seed, "device": device}
    top1, twin_top1 = switchable_linear_probe(trained, data, **run), switchable_linear_probe(untrained, data, **run)
    scores = tuple(
        ProtocolScore(f"width {label}", top1[label], twin_top1[label], None, len(data.bank), width=float(label),
                      flops=count_flops(network, data.resolution), params=count_params(network))
        for label, network in trained.items())
    report = ProtocolReport(
        name="switchable", description=SWITCHABLE, source=SWITCHABLE_SOURCE,
        hyperparameters={**settings_dict(switchable), "lr": scaled_lr(switchable.base_lr, switchable.batch_size),
                         **SGD, "seed": probe.seed},
        features=_features(switchable.augment), train_images=len(data.bank), test_images=len(data.val),
        test_split=data.val_source, num_classes=data.num_classes, scores=scores)
    configs = {label: network.source_config.to_dict() for label, network in trained.items()
               if network.source_config is not None}
    return {**report.to_dict(), "config": None, "configs": configs, "space": space,
            "resolution": data.resolution, "flop_convention": FLOP_CONVENTION,
            "source": {"checkpoint": str(checkpoint.resolve())}}
