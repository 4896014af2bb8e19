"""``python -m nas.export``: a searched sub-network as files that plain PyTorch loads.

This module is the command line: it parses, builds a :class:`nas.deploy.export.ExportRequest`, calls
:func:`nas.deploy.export.export` and prints a summary. What is written and checked: :mod:`nas.deploy.export`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import optuna

from nas.deploy.export import ExportRequest, export
from nas.deploy.sources import (
    ExportError,
    source_from_best,
    source_from_config,
    source_from_trial,
)
from nas.settings import load_search_settings
from nas.study.pareto import gate_speed_note
from supernet.cli import ArgumentParser, command
from supernet.io.checkpoint import find_latest_checkpoint
from supernet.nn.flops import FLOP_CONVENTION

__all__ = ["build_parser", "main", "print_summary", "request_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m nas.export",
        description="Export a sub-network of a trained supernet: subnet.json (config + metrics), weights.pt, and a "
        "torch.export program (model.pt2) that plain PyTorch loads; with --onnx also model.onnx, checked with "
        "onnxruntime. " + FLOP_CONVENTION + ".",
        epilog="Extra key=value arguments override configs/search.yaml (data.*, oracle.*, latency.*), "
        "e.g. oracle.calibration_images=2000. Exit codes: 0 ok, 1 the equality check failed, 2 bad input.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_result", type=Path, metavar="BEST_JSON",
                        help="a search output (best.json): its config and, unless --checkpoint, its checkpoint")
    source.add_argument("--trial", type=int, metavar="N", help="trial N of a search study (needs --storage)")
    source.add_argument("--config", type=Path, metavar="JSON", help="a SubnetConfig JSON file, or a record holding one (best.json)")
    parser.add_argument("--storage", default=None, help="with --trial: the study.journal of a search run, or a database URL")
    parser.add_argument("--study-name", default=None, help="with --trial: the study (default: the only one in --storage)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="supernet checkpoint (default: the one the search used; for --config the newest "
                        "checkpoint.pt under the current directory)")
    parser.add_argument("--out", type=Path, default=None, help="export directory (default: runs/export/<space>-<hash>)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]: where BN is recalibrated and metrics "
                        "measured (the program is exported on CPU)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write model.onnx (dynamic batch; gates in masked mode), checked with onnxruntime "
                        "against the supernet; needs pip install \"slimnas[onnx]\"")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    settings = load_search_settings(args.overrides)
    if args.trial is not None:
        if args.storage is None:
            raise ExportError("--trial: give the study with --storage PATH/study.journal (or a database URL)")
        source = source_from_trial(args.trial, args.storage, args.study_name)
    elif args.from_result is not None:
        source = source_from_best(args.from_result)
    else:
        source = source_from_config(args.config)
    checkpoint = args.checkpoint or source.checkpoint or find_latest_checkpoint(".")
    if checkpoint is None:
        raise ExportError("--checkpoint: no checkpoint.pt under the current directory; pass --checkpoint PATH")
    return ExportRequest(source=source, checkpoint=Path(checkpoint), out=args.out, device=args.device, settings=settings,
                         onnx=args.onnx)


def print_summary(record: dict[str, Any]) -> None:
    metrics, check, cfg = record["metrics"], record["check"], record["config"]
    latency = metrics["latency"]
    kind = "routed" if cfg.get("route_thresholds") else "gates on" if cfg["gate_thresholds"] else "gates off"
    print(f"exported {cfg['space']} sub-network ({kind}) to {record['out_dir']}")
    print(f"  kNN top-1 {metrics['accuracy']:.2%} | {metrics['flops'] / 1e6:.2f} MFLOPs, effective "
          f"{metrics['effective_flops'] / 1e6:.2f} MFLOPs ({FLOP_CONVENTION}) | {metrics['params'] / 1e6:.3f} M params | "
          f"latency {latency['seconds'] * 1e3:.3f} ms ({latency.get('runtime', 'eager')} {latency.get('dtype', 'float32')}, "
          f"{latency['device']}, batch {latency['batch_size']})")
    if "routing" in record:
        backends = [b for b in ("torch", "onnxruntime") if f"{b}_vs_network" in check]
        print(f"  routes: " + ", ".join(f"{share['multipliers']} {share['fraction']:.0%} of images (kNN {share['accuracy']:.1%})"
                                        for share in metrics.get("routes", [])))
        print(f"  check, max |difference| on {check['images']} validation images (tolerance {check['tolerance']:.0e}): "
              + ", ".join(f"{b} pieces vs routed network {check[f'{b}_vs_network']:.2e} (routes agree: "
                          f"{check[f'{b}_routes_agree']})" for b in backends)
              + f", routed network vs supernet at each route {check['network_vs_supernet']:.2e}")
    else:
        print(f"  check, max |difference| on {check['images']} validation images (tolerance {check['tolerance']:.0e}): "
              f"program vs network {check['program_vs_network']:.2e}, network vs supernet "
              f"{check['network_vs_supernet']:.2e}, program vs supernet {check['program_vs_supernet']:.2e}")
    if "onnx" in record:
        onnx = record["onnx"]
        print(f"  onnx: {onnx['exporter']}, opset {onnx['opset']}, {'dynamic' if onnx['dynamic_batch'] else 'fixed'} "
              f"batch; onnxruntime {onnx['onnxruntime']} vs supernet: max |difference| {onnx['max_abs_diff']:.2e} on "
              f"{onnx['check_images']} images; on {onnx['agreement_images']} validation images "
              f"{onnx['validation_within_tolerance']:.1%} within tolerance, kNN top-1 agreement "
              f"{onnx['top1_agreement']:.1%}")
    note = gate_speed_note({**metrics, "config": cfg}, label="latency")
    if note:
        print(f"  {note}")
    print(f"  input {record['input']['shape']} ({'dynamic' if record['input']['dynamic_batch'] else 'fixed'} batch); "
          f"files: {', '.join(record['files'].values())}")


@command()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides may sit between options
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print_summary(export(request_from_args(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
