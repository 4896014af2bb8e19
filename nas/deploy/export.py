"""Exporting a searched sub-network as files that plain PyTorch loads (``python -m nas.export`` is the command line).

Into the export directory (each file written atomically, ``subnet.json`` last):

* ``subnet.json``: the :class:`SubnetConfig`, its metrics measured as ``nas.search`` measures them
  (kNN top-1 of the oracle, fvcore FLOPs, effective FLOPs with gates, parameters, latency), the
  checkpoint, the input the network expects, and the result of the equality check below;
* ``weights.pt``: the extracted network's ``state_dict`` (BatchNorm recalibrated), readable with
  ``torch.load(path, weights_only=True)``; ``nas.evaluate`` rebuilds the network from the config;
* ``model.pt2``: a self-contained ``torch.export`` program with a dynamic batch dimension
  (:mod:`nas.deploy.program`; gated networks in masked mode);
* ``model.onnx`` (only with ``--onnx``): the same network as an ONNX model with a dynamic batch
  dimension, checked in onnxruntime against the supernet (:mod:`nas.deploy.onnx_model`);
* ``README.txt``: the three lines that load and run it.

A routed config (width routers) is exported as its pieces instead of one program (:mod:`nas.deploy.routed`):
``pieces/*.pt2`` (and ``pieces/*.onnx`` with ``--onnx``), ``routing.json`` and the runner ``routed_model.py``.

BatchNorm is recalibrated exactly as the search's oracle does it (same calibration images, seed,
batch size). Before anything is written the program is checked: on real validation images its
outputs, the extracted network's and the supernet's at ``set_active(config)`` (a copy of the supernet
recalibrated on the same images) must agree to ``TOLERANCE``; with ``--onnx``, so must onnxruntime's
outputs, and the oracle's kNN must predict the same class from them on its validation images.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.deploy.onnx_model import (
    ONNX_FILE,
    check_onnx,
    export_onnx,
    knn_probe,
    onnx_record,
    require_onnx,
)
from nas.deploy.program import (
    CHECK_IMAGES,
    EXPORT_FORMAT,
    FILES,
    check_program,
    export_program,
    readme,
)
from nas.deploy.routed import (
    PIECES_DIR,
    ROUTED_FILES,
    RUNNER,
    TABLE,
    check_routed,
    export_routed_onnx,
    export_routed_pieces,
    routing_table,
    write_runner,
)
from nas.deploy.sources import ExportSource, check_fits
from nas.settings import SearchSettings
from nas.study.candidates import CandidateEvaluator
from nas.study.oracle import Oracle, build_oracle, trained_data_settings
from search_spaces import SubnetConfig
from supernet.data.views import IMAGENET_MEAN, IMAGENET_STD
from supernet.devices import resolve_device
from supernet.io.checkpoint import load_supernet
from supernet.io.files import atomic_save, atomic_write_text
from supernet.io.provenance import provenance
from supernet.nn.bn import recalibrate_bn
from supernet.nn.flops import FLOP_CONVENTION
from supernet.nn.models import SuperNet
from supernet.nn.routing import RoutedNetwork
from supernet.settings import settings_dict

__all__ = ["ExportRequest", "default_out_dir", "export", "measure", "supernet_reference"]


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
    if cfg.routed:
        return _export_routed(request, cfg, supernet, payload, oracle, device)
    network = oracle.subnet(cfg).eval()  # extracted, BatchNorm recalibrated as the search does it
    metrics = measure(network, cfg, oracle, request.settings, device)

    network = network.cpu()
    network.set_gate_mode("masked")
    reference = supernet_reference(supernet, cfg, oracle)
    images = _check_images(oracle)
    program, dynamic_batch = export_program(network, images)

    out_dir = request.out or default_out_dir(cfg)
    with _staging(out_dir) as staging:
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
        for stale in (TABLE, RUNNER):  # nor do an earlier routed export's pieces
            (out_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(out_dir / PIECES_DIR, ignore_errors=True)
    return {**record, "out_dir": str(out_dir)}


def measure(network: SuperNet | RoutedNetwork, cfg: SubnetConfig, oracle: Oracle, settings: SearchSettings,
            device: torch.device) -> dict[str, Any]:
    """The search's metrics of a recalibrated network, measured by the search's own evaluator."""
    source = oracle.supernet if isinstance(network, RoutedNetwork) else network  # what the static widths come from
    evaluator = CandidateEvaluator(source, oracle, flops_budget=None, latency_budget=None, latency=settings.latency,
                                   effective_flops_images=settings.effective_flops_images, device=device)
    costs = evaluator.costs(network, cfg)
    latency = evaluator.measure_latency(network, cfg)
    by_batch, static_by_batch = evaluator.latency_profile(network, cfg, latency)
    metrics = {"accuracy": oracle.accuracy(cfg, network), **costs.to_dict(), "latency": latency,
               "latency_by_batch": by_batch, "static_latency_by_batch": static_by_batch,
               "resolution": oracle.data.resolution}
    if isinstance(network, RoutedNetwork):
        metrics["routes"] = [share.to_dict() for share in oracle.routed_score(cfg, network).routes]
    return metrics


def _export_routed(request: ExportRequest, cfg: SubnetConfig, supernet: SuperNet, payload: dict[str, Any],
                   oracle: Oracle, device: torch.device) -> dict[str, Any]:
    """:func:`export` of a routed config: its pieces, routing table and runner (:mod:`nas.deploy.routed`)."""
    network = oracle.routed_network(cfg)
    metrics = measure(network, cfg, oracle, request.settings, device)
    images = _route_covering_images(network, oracle)
    with torch.no_grad():
        network.cpu().eval()(images)
        taken = sorted({tuple(row) for row in network.last_levels.tolist()})  # type: ignore[union-attr]
    references = {route: supernet_reference(supernet, network.route_config(route), oracle) for route in taken}
    out_dir = request.out or default_out_dir(cfg)
    with _staging(out_dir) as staging:
        dynamic_batch = export_routed_pieces(network, images, staging)
        onnx = export_routed_onnx(network, images, staging) if request.onnx else None
        table = routing_table(network)
        atomic_write_text(staging / TABLE, json.dumps(table, indent=2))
        write_runner(staging)
        check = check_routed(staging, network, references, images, onnx=request.onnx)
        record = _record(request, cfg, payload, oracle, metrics, check, None, dynamic_batch, network, resolution=oracle.data.resolution,
                         device=device)
        record.update({"files": dict(ROUTED_FILES), "routing": table, "gate_mode": None,
                       **({"onnx_pieces": onnx} if onnx else {})})
        record["output"] = {"shape": [1, network.feature_dim],
                            "meaning": "pooled encoder features of each image's route, zero-padded to the widest route's width"}
        atomic_save({name: tensor.detach().cpu() for name, tensor in network.state_dict().items()},
                    staging / ROUTED_FILES["weights"])
        atomic_write_text(staging / ROUTED_FILES["readme"], routed_readme(record))
        atomic_write_text(staging / ROUTED_FILES["config"], json.dumps(record, indent=2))
        for stale in (FILES["program"], ONNX_FILE):  # a static export's files no longer match subnet.json
            (out_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(out_dir / PIECES_DIR, ignore_errors=True)
        for name in (PIECES_DIR, TABLE, RUNNER, ROUTED_FILES["weights"], ROUTED_FILES["readme"], ROUTED_FILES["config"]):
            os.replace(staging / name, out_dir / name)  # subnet.json last: it describes the others
    return {**record, "out_dir": str(out_dir)}


def _route_covering_images(network: RoutedNetwork, oracle: Oracle, pool: int = 256) -> torch.Tensor:
    """:data:`CHECK_IMAGES` validation images that take as many of the routes as the first ``pool`` take: the first
    image of each route, then the first images again (the validation split may be ordered by class)."""
    candidates = oracle.data.val[:pool].cpu()
    with torch.no_grad():
        network.cpu().eval()(candidates)
    routes = [tuple(row) for row in network.last_levels.tolist()]  # type: ignore[union-attr]
    first = list(dict.fromkeys(routes))
    chosen = [routes.index(route) for route in first][:CHECK_IMAGES]
    chosen += [i for i in range(len(routes)) if i not in chosen][: CHECK_IMAGES - len(chosen)]
    images = candidates[sorted(chosen)]
    return images if images.shape[0] >= 2 else torch.cat([images, oracle.data.calibration[: 2 - images.shape[0]]])


def routed_readme(record: dict[str, Any]) -> str:
    cfg, shape, table = record["config"], record["input"]["shape"], record["routing"]
    onnx = ("\nWith onnxruntime (pip install onnxruntime): RoutedModel(\".\", backend=\"onnxruntime\") runs\n"
            "pieces/*.onnx instead.\n" if record.get("onnx_pieces") else "")
    return (
        f"{cfg['space']} routed sub-network exported by python -m nas.export (slimnas {record['provenance']['version']}).\n\n"
        "A width router in front of each of these blocks picks, per image, one width level for its group of blocks:\n"
        f"{', '.join(table['router_blocks'])} (levels {table['levels']}, thresholds {[None if t is None else round(t, 4) for t in table['thresholds']]}).\n"
        "Each piece (prefix, routers, branches) is a torch.export program in pieces/; routing.json chains them.\n\n"
        "Run it with plain PyTorch (this project need not be installed):\n\n"
        "    from routed_model import RoutedModel\n"
        "    model = RoutedModel(\".\")\n"
        f"    features, levels = model(images)  # images: float32 (B, 3, {shape[2]}, {shape[3]}) -> (B, {table['feature_dim']}), (B, "
        f"{len(table['router_blocks'])})\n{onnx}\n"
        f"Images: RGB scaled to [0, 1], then normalised per channel with mean {record['input']['normalization']['mean']}\n"
        f"and std {record['input']['normalization']['std']} (torchvision's Normalize).\n"
        f"Output: {record['output']['meaning']}; levels: each image's level index per router.\n\n"
        f"Files: subnet.json (config, metrics, FLOPs by {FLOP_CONVENTION}), weights.pt (the routed network's state_dict),\n"
        "pieces/ (torch.export programs" + (" and ONNX models" if record.get("onnx_pieces") else "") + "), routing.json, routed_model.py.\n"
    )


def supernet_reference(supernet: SuperNet, cfg: SubnetConfig, oracle: Oracle) -> SuperNet:
    """A CPU copy of the supernet at ``set_active(cfg)``, BatchNorm recalibrated like the oracle's networks."""
    reference = copy.deepcopy(supernet).cpu()
    reference.set_active(cfg)
    reference.set_gate_mode("masked")
    return recalibrate_bn(reference, oracle.data.calibration, len(oracle.data.calibration),
                          batch_size=oracle.batch_size, seed=oracle.seed, device="cpu")


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A staging folder inside ``out_dir`` that the export writes into and moves out of; removed whatever happens,
    and ``out_dir`` with it if this export created it and failed (nothing half-written is left)."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        yield staging
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
