"""``python -m nas.export``: a searched sub-network as files that plain PyTorch loads.

Into the export directory (each file written atomically, ``subnet.json`` last):

* ``subnet.json``: the :class:`SubnetConfig`, its metrics measured as ``nas.search`` measures them
  (kNN top-1 of the oracle, fvcore FLOPs, effective FLOPs with gates, parameters, latency), the
  checkpoint, the input the network expects, and the result of the equality check below;
* ``weights.pt``: the extracted network's ``state_dict`` (BatchNorm recalibrated), readable with
  ``torch.load(path, weights_only=True)``; ``nas.evaluate`` rebuilds the network from the config;
* ``model.pt2``: a self-contained ``torch.export`` program with a dynamic batch dimension
  (:mod:`nas.program`; gated networks in masked mode);
* ``model.onnx`` (only with ``--onnx``): the same network as an ONNX model with a dynamic batch
  dimension, checked in onnxruntime against the supernet (:mod:`nas.onnx_program`);
* ``README.txt``: the three lines that load and run it.

BatchNorm is recalibrated exactly as the search's oracle does it (same calibration images, seed,
batch size). Before anything is written the program is checked: on real validation images its
outputs, the extracted network's and the supernet's at ``set_active(config)`` (a copy of the supernet
recalibrated on the same images) must agree to ``TOLERANCE``; with ``--onnx``, so must onnxruntime's
outputs, and the oracle's kNN must predict the same class from them on its validation images.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.candidates import CandidateEvaluator
from nas.onnx_program import (
    ONNX_FILE,
    check_onnx,
    export_onnx,
    knn_probe,
    onnx_record,
    require_onnx,
)
from nas.oracle import Oracle, build_oracle, trained_data_settings
from nas.pareto import gate_speed_note
from nas.program import (
    CHECK_IMAGES,
    EXPORT_FORMAT,
    FILES,
    check_program,
    export_program,
    readme,
)
from nas.settings import SearchSettings, load_search_settings
from nas.sources import (
    ExportError,
    ExportSource,
    check_fits,
    source_from_best,
    source_from_config,
    source_from_trial,
)
from search_spaces import SubnetConfig
from supernet.cli import ArgumentParser, command
from supernet.data.views import IMAGENET_MEAN, IMAGENET_STD
from supernet.devices import resolve_device
from supernet.io.checkpoint import find_latest_checkpoint, load_supernet
from supernet.io.files import atomic_save, atomic_write_text
from supernet.io.provenance import provenance
from supernet.nn.bn import recalibrate_bn
from supernet.nn.flops import FLOP_CONVENTION
from supernet.nn.models import SuperNet
from supernet.settings import settings_dict

__all__ = ["ExportRequest", "default_out_dir", "export", "main", "measure"]


@dataclass
class ExportRequest:
    source: ExportSource
    checkpoint: Path
    out: Path | None
    device: str
    settings: SearchSettings
    onnx: bool = False  # also write model.onnx, checked with onnxruntime


def default_out_dir(cfg: SubnetConfig) -> Path:
    """``runs/export/<space>-<first 8 hex digits of the config's SHA-1>``."""
    return Path("runs") / "export" / f"{cfg.space}-{hashlib.sha1(cfg.key().encode()).hexdigest()[:8]}"


def export(request: ExportRequest) -> dict[str, Any]:
    """Measure, export, check and write one sub-network; returns the ``subnet.json`` record."""
    if request.onnx:
        require_onnx()  # before the checkpoint is even read
    device = resolve_device(request.device, key="--device")
    cfg = request.source.config
    supernet, payload = load_supernet(request.checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    check_fits(cfg, supernet, where=_where(request.source), checkpoint=request.checkpoint)
    oracle = build_oracle(supernet, payload, request.settings.data, request.settings.oracle, device)
    resolution = oracle.data.resolution
    if cfg.resolution != resolution:
        print(f"note: the config says {cfg.resolution} px but the supernet was trained and is scored at {resolution} px; "
              f"the metrics and the exported program use {resolution} px", file=sys.stderr)
    network = oracle.subnet(cfg).eval()  # extracted, BatchNorm recalibrated as the search does it
    metrics = measure(network, cfg, oracle, request.settings, device)

    network = network.cpu()
    network.set_gate_mode("masked")
    reference = supernet_reference(supernet, cfg, oracle)
    images = _check_images(oracle)
    program, dynamic_batch = export_program(network, images)

    out_dir = request.out or default_out_dir(cfg)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        torch.export.save(program, staging / FILES["program"])
        check = check_program(staging / FILES["program"], network, reference, images)
        onnx = None
        if request.onnx:
            onnx_export = export_onnx(network, images, staging / ONNX_FILE)
            onnx_check = check_onnx(onnx_export, reference, images, knn_probe(reference, oracle, device=device))
            onnx = onnx_record(onnx_export, onnx_check, gate_mode="masked" if cfg.gated else None)
        record = _record(request, cfg, payload, oracle, metrics, check, onnx, dynamic_batch, network, resolution, device)
        files = record["files"]
        atomic_save({name: tensor.detach().cpu() for name, tensor in network.state_dict().items()},
                    staging / files["weights"])
        atomic_write_text(staging / files["readme"], readme(record))
        atomic_write_text(staging / files["config"], json.dumps(record, indent=2))
        for key in [k for k in files if k != "config"] + ["config"]:  # subnet.json last: it describes the others
            os.replace(staging / files[key], out_dir / files[key])
        if "onnx" not in files:  # a model.onnx of an earlier export with --onnx no longer matches subnet.json
            (out_dir / ONNX_FILE).unlink(missing_ok=True)
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**record, "out_dir": str(out_dir)}


def measure(network: SuperNet, cfg: SubnetConfig, oracle: Oracle, settings: SearchSettings,
            device: torch.device) -> dict[str, Any]:
    """The search's metrics of a recalibrated network, measured by the search's own evaluator."""
    evaluator = CandidateEvaluator(network, oracle, flops_budget=None, latency_budget=None, latency=settings.latency,
                                   effective_flops_images=settings.effective_flops_images, device=device)
    costs = evaluator.costs(network, cfg)
    latency = evaluator.measure_latency(network, cfg)
    by_batch, static_by_batch = evaluator.latency_profile(network, cfg, latency)
    return {"accuracy": oracle.accuracy(cfg, network), **costs.to_dict(), "latency": latency,
            "latency_by_batch": by_batch, "static_latency_by_batch": static_by_batch,
            "resolution": oracle.data.resolution}


def supernet_reference(supernet: SuperNet, cfg: SubnetConfig, oracle: Oracle) -> SuperNet:
    """A CPU copy of the supernet at ``set_active(cfg)``, BatchNorm recalibrated like the oracle's networks."""
    reference = copy.deepcopy(supernet).cpu()
    reference.set_active(cfg)
    reference.set_gate_mode("masked")
    return recalibrate_bn(reference, oracle.data.calibration, len(oracle.data.calibration),
                          batch_size=oracle.batch_size, seed=oracle.seed, device="cpu")


def _check_images(oracle: Oracle) -> torch.Tensor:
    images = oracle.data.val[:CHECK_IMAGES]
    if images.shape[0] < 2:  # the dynamic batch dimension needs an example of more than one image
        images = torch.cat([images, oracle.data.calibration[: 2 - images.shape[0]]])
    return images.cpu()


def _record(request: ExportRequest, cfg: SubnetConfig, payload: dict[str, Any], oracle: Oracle, metrics: dict[str, Any],
            check: dict[str, Any], onnx: dict[str, Any] | None, dynamic_batch: bool, network: SuperNet, resolution: int,
            device: torch.device) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "config": cfg.to_dict(),
        "metrics": {**metrics, "accuracy_metric": f"weighted kNN top-1 (cosine, k={oracle.k}, T={oracle.temperature}; "
                                                  f"{len(oracle.data.bank)} bank, {len(oracle.data.val)} validation images)"},
        "flop_convention": FLOP_CONVENTION,
        "checkpoint": str(Path(request.checkpoint).resolve()),
        "checkpoint_step": int(payload.get("step", 0)),
        "with_gates": bool(payload.get("with_gates", True)),  # the supernet's: its untrained twin needs it
        "gate_options": payload.get("gate_options", {}),
        "source": request.source.origin,
        "files": {**FILES, "onnx": ONNX_FILE} if onnx else dict(FILES),
        "input": {
            "shape": [1, 3, resolution, resolution],
            "dynamic_batch": dynamic_batch,
            "dtype": "float32",
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                              "note": "RGB scaled to [0, 1], then (x - mean) / std per channel"},
        },
        "output": {"shape": [1, network.feature_dim], "meaning": "pooled encoder features (no classifier head)"},
        "gate_mode": "masked" if cfg.gated else None,
        "recalibration": {"images": len(oracle.data.calibration), "seed": oracle.seed, "batch_size": oracle.batch_size,
                          "device": str(device)},
        "check": check,
        **({"onnx": onnx} if onnx else {}),
        "data": trained_data_settings(payload),
        "settings": settings_dict(request.settings),
        "provenance": provenance(),
    }


def _where(source: ExportSource) -> str:
    origin = source.origin
    return f"trial {origin['number']}" if origin["kind"] == "trial" else str(origin["path"])


# -- command line ----------------------------------------------------------------------------------
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
    source.add_argument("--config", type=Path, metavar="JSON", help="a SubnetConfig JSON file")
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
    print(f"exported {cfg['space']} sub-network (gates {'on' if cfg['gate_thresholds'] else 'off'}) "
          f"to {record['out_dir']}")
    print(f"  kNN top-1 {metrics['accuracy']:.2%} | {metrics['flops'] / 1e6:.2f} MFLOPs, effective "
          f"{metrics['effective_flops'] / 1e6:.2f} MFLOPs ({FLOP_CONVENTION}) | {metrics['params'] / 1e6:.3f} M params | "
          f"latency {latency['seconds'] * 1e3:.3f} ms ({latency['device']}, batch {latency['batch_size']})")
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
    note = gate_speed_note(metrics, label="latency")
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
