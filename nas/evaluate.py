"""``python -m nas.evaluate``: the frozen-feature accuracies a paper reports, for one sub-network.

Two evaluations of the same frozen, pooled features (no augmentation), each printed beside the same
architecture untrained (the supernet's initial weights, BatchNorm recalibrated the same way) and
raw pixels (the flattened images as features):

* weighted kNN top-1 (cosine, k = 20, T = 0.07; Wu et al. 2018, as in DINO): the labeled training
  images (the oracle's bank) vote for each held-out image;
* linear probe top-1: a logistic-regression head fitted on the same labeled training images
  (features standardised with their mean and standard deviation, full-batch L-BFGS, L2 on the
  weights; :func:`supernet.evaluation.linear_probe`) and scored on the held-out split.

The sub-network is an export directory (``--export DIR``: rebuilt from ``subnet.json`` and
``weights.pt``, whose BatchNorm statistics were recalibrated at export, so no checkpoint is needed)
or a config (``--config JSON [--checkpoint CKPT]``: extracted from the supernet and recalibrated as
the search does it). Data: the data set the supernet was trained on, split and sized by the
``data.*`` and ``oracle.*`` settings of configs/search.yaml; the probe by ``probe.*``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.cost import measure_costs
from nas.oracle import build_eval_data, build_oracle, trained_data_settings
from nas.program import load_exported
from nas.settings import SearchSettings, load_search_settings
from nas.sources import check_fits, source_from_config
from nas.study import SearchError
from search_spaces import SubnetConfig, get_space
from supernet.cli import ArgumentParser, command
from supernet.devices import resolve_device
from supernet.evaluation import (
    EvalData,
    embed_tensor,
    knn_accuracy,
    linear_probe,
    raw_pixel_knn,
    raw_pixel_probe,
    untrained_network,
)
from supernet.io.checkpoint import find_latest_checkpoint, load_supernet
from supernet.nn.bn import recalibrate_bn
from supernet.nn.flops import FLOP_CONVENTION
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet


@dataclass
class EvaluateRequest:
    export_dir: Path | None
    config: Path | None
    checkpoint: Path | None
    device: str
    settings: SearchSettings


def evaluate(request: EvaluateRequest) -> dict[str, Any]:
    """kNN and linear-probe top-1 (in [0, 1]), FLOPs and parameters of the requested sub-network."""
    device = resolve_device(request.device, key="--device")
    settings = request.settings
    if request.export_dir is not None:
        network, record = load_exported(request.export_dir)
        cfg = network.source_config
        assert cfg is not None
        trained = record.get("data") or {}
        data = build_eval_data(trained, settings.data, settings.oracle, default_resolution=get_space(cfg.space).default_resolution)
        network = network.to(device).eval()
        source = {"export": str(request.export_dir)}
        seed, with_gates = int(trained.get("seed", 0)), bool(record.get("with_gates", True))
        options = GateOptions(**record.get("gate_options", {}))
    else:
        assert request.config is not None
        cfg = source_from_config(request.config).config
        checkpoint = request.checkpoint or find_latest_checkpoint(".")
        if checkpoint is None:
            raise SearchError("--checkpoint: no checkpoint.pt under the current directory; pass --checkpoint PATH")
        network, data, seed, with_gates, options = _extract(cfg, Path(checkpoint), request.config, settings, device)
        source = {"config": str(request.config), "checkpoint": str(Path(checkpoint).resolve())}
    untrained = untrained_network(cfg, seed=seed, with_gates=with_gates, gate_options=options)
    return {**evaluate_network(network, cfg, data, settings, device, untrained=untrained), "source": source}


def _extract(cfg: SubnetConfig, checkpoint: Path, where: Path, settings: SearchSettings,
             device: torch.device) -> tuple[SuperNet, EvalData, int, bool, GateOptions]:
    supernet, payload = load_supernet(checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    check_fits(cfg, supernet, where=str(where), checkpoint=checkpoint)
    oracle = build_oracle(supernet, payload, settings.data, settings.oracle, device)
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


# -- command line ----------------------------------------------------------------------------------
def print_table(result: dict[str, Any]) -> None:
    cfg, protocol, baselines = result["config"], result["protocol"], result["baselines"]
    where = result["source"].get("export") or result["source"].get("config")
    print(f"{cfg['space']} sub-network (gates {'on' if cfg['gate_thresholds'] else 'off'}) at {result['resolution']} px, "
          f"from {where}")
    names = [f"kNN top-1 (k={protocol['knn']['k']}, T={protocol['knn']['temperature']})",
             f"linear probe top-1 (L-BFGS, {protocol['linear_probe']['epochs']} iterations)"]
    width = max(len(name) for name in names)
    print(f"  {'':<{width}}  {'trained':>10} {'untrained':>10} {'raw pixels':>10}")
    for name, key in zip(names, ("knn", "linear_probe")):
        raw = baselines["raw_pixels"][key]
        print(f"  {name:<{width}}  {result[key]:>10.2%} {baselines['untrained'][key]:>10.2%} "
              f"{'-' if raw is None else f'{raw:.2%}':>10}")
    print(f"  FLOPs {result['flops'] / 1e6:.2f} M ({FLOP_CONVENTION}); effective (gates on, mean per image) "
          f"{result['effective_flops'] / 1e6:.2f} M; parameters {result['params'] / 1e6:.3f} M")
    print(f"  fitted on {protocol['train_images']} labeled training images, scored on {protocol['test_images']} "
          f"{protocol['test_split']} images ({protocol['num_classes']} classes)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas.evaluate",
        description="kNN and linear-probe top-1 on frozen features of an exported sub-network (or a config), with "
        f"its FLOPs ({FLOP_CONVENTION}) and parameters.",
        epilog="Extra key=value arguments override configs/search.yaml: data.* (data set), oracle.bank_size (labeled "
        "training images), oracle.val_size, oracle.k, oracle.temperature, probe.epochs, probe.lr, probe.weight_decay.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, metavar="DIR", help="a directory written by python -m nas.export")
    source.add_argument("--config", type=Path, metavar="JSON", help="a SubnetConfig JSON file (with --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="with --config: the supernet checkpoint (default: the newest checkpoint.pt under the "
                        "current directory)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


@command()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides may sit between options
    if args.export is not None and args.checkpoint is not None:
        raise SearchError("--checkpoint: an export directory holds its own weights; use --checkpoint with --config")
    request = EvaluateRequest(export_dir=args.export, config=args.config, checkpoint=args.checkpoint,
                              device=args.device, settings=load_search_settings(args.overrides))
    result = evaluate(request)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
