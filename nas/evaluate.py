"""``python -m nas.evaluate``: a sub-network's top-1 under an evaluation protocol, beside the same architecture
untrained and raw pixels.

This module is the command line: it parses, builds a :class:`nas.deploy.evaluation.EvaluateRequest`, calls
:func:`nas.deploy.evaluation.evaluate` and prints the table. The protocols: :mod:`nas.deploy.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from nas.deploy.evaluation import EvaluateRequest, evaluate
from nas.settings import PROBE_PROTOCOLS, ProbeProtocol, load_search_settings
from nas.study.storage import SearchError
from supernet.cli import ArgumentParser, command
from supernet.nn.flops import FLOP_CONVENTION

__all__ = ["build_parser", "main", "print_protocol_table", "print_table"]


def print_table(result: dict[str, Any]) -> None:
    if result["protocol"]["name"] != "fast":
        print_protocol_table(result)
        return
    cfg, protocol, baselines = result["config"], result["protocol"], result["baselines"]
    where = result["source"].get("export") or result["source"].get("config")
    print(f"{cfg['space']} sub-network (gates {'on' if cfg['gate_thresholds'] else 'off'}) at {result['resolution']} px, "
          f"from {where}")
    knn, probe = protocol["knn"], protocol["linear_probe"]
    print(f"  protocol fast: kNN (k={knn['k']}, T={knn['temperature']}, cosine) and logistic regression (L-BFGS, "
          f"{probe['epochs']} iterations, lr={probe['lr']}, weight_decay={probe['weight_decay']}, seed={probe['seed']}) "
          "on frozen, cached, standardised features")
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


def print_protocol_table(result: dict[str, Any]) -> None:
    """The ``linear``, ``switchable`` and ``semi`` report: protocol, hyper-parameters, splits, scores."""
    protocol, cfg = result["protocol"], result["config"]
    if cfg is not None:
        where = result["source"].get("export") or result["source"].get("config")
        print(f"{cfg['space']} sub-network (gates {'on' if cfg['gate_thresholds'] else 'off'}) at "
              f"{result['resolution']} px, from {where}")
    else:
        print(f"{result['space']} supernet at uniform widths, {result['resolution']} px, from "
              f"{result['source']['checkpoint']}")
    print(f"  protocol {protocol['name']}: {protocol['description']}")
    print(f"    source: {protocol['source']}")
    print("    hyper-parameters: " + ", ".join(f"{key}={value}" for key, value in protocol["hyperparameters"].items()))
    print(f"    features: {protocol['features']}")
    for note in protocol["notes"]:
        print(f"    note: {note}")
    print(f"  splits: {protocol['train_images']} labelled training images, {protocol['test_images']} "
          f"{protocol['test_split']} test images, {protocol['num_classes']} classes")
    names = [f"{row['name']} top-1 ({row['labelled_images']} labelled)" for row in result["scores"]]
    width = max(len(name) for name in names)
    print(f"  {'':<{width}}  {'trained':>10} {'untrained':>10} {'raw pixels':>10}"
          + (f" {'FLOPs':>10} {'params':>9}" if cfg is None else ""))
    for name, row in zip(names, result["scores"]):
        raw = row["raw_pixels"]
        costs = f" {row['flops'] / 1e6:>9.2f}M {row['params'] / 1e6:>8.3f}M" if cfg is None else ""
        print(f"  {name:<{width}}  {row['top1']:>10.2%} {row['untrained']:>10.2%} "
              f"{'-' if raw is None else f'{raw:.2%}':>10}{costs}")
    print(f"  untrained: {protocol['untrained']}")
    if cfg is not None:
        print(f"  FLOPs {result['flops'] / 1e6:.2f} M ({FLOP_CONVENTION}); effective (gates on, mean per image) "
              f"{result['effective_flops'] / 1e6:.2f} M; parameters {result['params'] / 1e6:.3f} M")
    else:
        print(f"  FLOPs: {FLOP_CONVENTION}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas.evaluate",
        description="Top-1 of an exported sub-network (or a config) under an evaluation protocol, beside the same "
        f"architecture untrained and raw pixels, with its FLOPs ({FLOP_CONVENTION}) and parameters.",
        epilog="Protocols: fast (kNN + L-BFGS logistic regression on cached features; default), linear (standard "
        "linear evaluation, SGD on augmented images), switchable (SlimCLR: one head per uniform width; --checkpoint "
        "only), semi (SSLight: fine-tuning on 1 and 10 percent of the labels). Extra key=value arguments override "
        "configs/search.yaml: data.* (data set), oracle.bank_size (fast: labeled training images), oracle.val_split "
        "(heldout: score on the held-out split that judges; train, the default: on the oracle's own validation images), "
        "oracle.val_size, "
        "oracle.k, oracle.temperature, probe.epochs / probe.lr / probe.weight_decay (fast), probe.train_images, "
        "probe.linear.*, probe.switchable.*, probe.semi.* (e.g. probe.linear.epochs=2 for a smoke run).",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--export", type=Path, metavar="DIR", help="a directory written by python -m nas.export")
    source.add_argument("--config", type=Path, metavar="JSON", help="a SubnetConfig JSON file, or a record holding one such as best.json (with --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="with --config, or alone for --protocol switchable: the supernet checkpoint (default: "
                        "the newest checkpoint.pt under the current directory)")
    parser.add_argument("--protocol", choices=PROBE_PROTOCOLS, default=None,
                        help="what to measure (default: probe.protocol of configs/search.yaml, fast)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


@command()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides may sit between options
    if args.export is not None and args.checkpoint is not None:
        raise SearchError("--checkpoint: an export directory holds its own weights; use --checkpoint with --config")
    settings = load_search_settings(args.overrides)
    if args.protocol is not None:
        settings.probe.protocol = ProbeProtocol(args.protocol)
    request = EvaluateRequest(export_dir=args.export, config=args.config, checkpoint=args.checkpoint,
                              device=args.device, settings=settings)
    result = evaluate(request)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
