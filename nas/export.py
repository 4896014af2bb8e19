"""``python -m nas.export``: a searched sub-network as files that plain PyTorch loads.

Into the export directory (each file written atomically, ``subnet.json`` last):

* ``subnet.json``: the :class:`SubnetConfig`, its metrics measured as ``nas.search`` measures them
  (kNN top-1 of the oracle, fvcore FLOPs, effective FLOPs with gates, parameters, latency), the
  checkpoint, the input the network expects, and the result of the equality check below;
* ``weights.pt``: the extracted network's ``state_dict`` (BatchNorm recalibrated), readable with
  ``torch.load(path, weights_only=True)``; ``nas.evaluate`` rebuilds the network from the config;
* ``model.pt2``: a self-contained ``torch.export`` program with a dynamic batch dimension, which
  ``torch.export.load(path).module()`` runs without this project installed;
* ``README.txt``: the three lines that load and run it.

BatchNorm is recalibrated exactly as the search's oracle does it (same calibration images, seed,
batch size). Before anything is written the program is checked: on real validation images its
outputs, the extracted network's and the supernet's at ``set_active(config)`` (a copy of the supernet
recalibrated on the same images) must agree to ``TOLERANCE``.

Gated networks are exported in masked mode: the gates compute a 0/1 mask per input and every
channel is computed, then the dropped ones are zeroed. Gathered mode (batch 1, only the kept
channels' weights) has data-dependent shapes, which ``torch.export`` does not capture; the masked
program computes the same outputs, but without the gathered mode's savings.
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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import OmegaConf

from nas.candidates import CandidateEvaluator, LatencySettings
from nas.oracle import Oracle, build_oracle, trained_data_settings
from nas.pareto import atomic_write_text
from nas.search import SearchError, journal_storage, load_settings, resolve_device
from supernet.provenance import provenance
from search_spaces import ConfigError, SubnetConfig, get_space
from supernet.bn import recalibrate_bn
from supernet.checkpoint import CheckpointError, atomic_save, find_latest_checkpoint, load_supernet
from supernet.data import DataError
from supernet.flops import count_flops, count_params, effective_flops
from supernet.models import SuperNet, build_supernet
from supernet.views import IMAGENET_MEAN, IMAGENET_STD

EXPORT_FORMAT = "slimnas-subnet/1"
FLOP_CONVENTION = "fvcore: one multiply-add = one flop"
FILES = {"config": "subnet.json", "weights": "weights.pt", "program": "model.pt2", "readme": "README.txt"}
CHECK_IMAGES = 8  # validation images the program, the extracted network and the supernet are compared on
TOLERANCE = 1e-4  # max |difference| of their outputs


class ExportError(ValueError):
    """An export input the user can fix (a missing file, an unknown trial); one line naming it."""


class ExportCheckError(RuntimeError):
    """The exported program does not compute what the supernet computes for the config (a defect)."""


# -- where the config comes from ------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSource:
    """A config to export, the checkpoint its source names (if any), and where it came from."""

    config: SubnetConfig
    checkpoint: Path | None
    origin: dict[str, Any]


def source_from_best(path: Path) -> ExportSource:
    """A search output (``best.json``, or any record with ``config`` and ``checkpoint``)."""
    record = _read_json(path, "--from", expected="a best.json written by nas.search")
    if not isinstance(record, dict) or "config" not in record:
        raise ExportError(f"--from: {path} has no \"config\"; expected a best.json written by nas.search")
    cfg = _config_from(record["config"], str(path))
    checkpoint = record.get("checkpoint")
    return ExportSource(cfg, Path(checkpoint) if checkpoint else None, {"kind": "search_result", "path": str(path)})


def source_from_config(path: Path) -> ExportSource:
    """A plain :class:`SubnetConfig` JSON file; the checkpoint comes from elsewhere."""
    data = _read_json(path, "--config", expected="a SubnetConfig JSON file")
    return ExportSource(_config_from(data, str(path)), None, {"kind": "config", "path": str(path)})


def source_from_trial(number: int, storage: str, study_name: str | None) -> ExportSource:
    """Trial ``number`` of a search study (journal file or database URL)."""
    study = open_study(storage, study_name)
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None:
        numbers = [t.number for t in study.get_trials(deepcopy=False)]
        held = f"its trials are {min(numbers)}..{max(numbers)}" if numbers else "it has no trials"
        raise ExportError(f"--trial: study {study.study_name!r} has no trial {number}; {held}")
    result = trial.user_attrs.get("result")
    if not isinstance(result, dict) or "config" not in result:
        raise ExportError(f"--trial: trial {number} of study {study.study_name!r} is {trial.state.name} and has no "
                          "result; pick a COMPLETE trial (see pareto.csv)")
    checkpoint = (study.user_attrs.get("identity") or {}).get("checkpoint")
    origin = {"kind": "trial", "number": number, "study": study.study_name, "storage": storage}
    return ExportSource(_config_from(result["config"], f"trial {number}"), Path(checkpoint) if checkpoint else None, origin)


def open_study(storage: str, study_name: str | None) -> optuna.Study:
    """A search study from a URL (``postgresql://...``, ``sqlite:///...``) or a journal file path."""
    if "://" in storage:
        backend: Any = storage
    elif Path(storage).is_file():
        backend = journal_storage(Path(storage))
    else:
        raise ExportError(f"--storage: {storage} does not exist; expected the study.journal of a search run or a "
                          "database URL")
    try:
        names = optuna.get_all_study_names(storage=backend)
    except Exception as error:  # noqa: BLE001 - a database that refuses, a file that is not a journal
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"--storage: cannot read studies from {storage} ({reason[:160]})") from None
    if study_name is None:
        if len(names) != 1:
            raise ExportError(f"--study-name: {storage} holds {len(names)} studies; name one of: {', '.join(names) or '-'}")
        study_name = names[0]
    if study_name not in names:
        raise ExportError(f"--study-name: no study {study_name!r} in {storage}; it holds: {', '.join(names) or '-'}")
    return optuna.load_study(study_name=study_name, storage=backend)


def _read_json(path: Path, option: str, *, expected: str) -> Any:
    if not path.is_file():
        raise ExportError(f"{option}: {path} does not exist; expected {expected}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{option}: {path} is not valid JSON ({error}); expected {expected}") from None


def _config_from(data: Any, where: str) -> SubnetConfig:
    try:
        return SubnetConfig.from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


# -- the export -------------------------------------------------------------------------------------
@dataclass
class ExportRequest:
    source: ExportSource
    checkpoint: Path
    out: Path | None
    device: str
    settings: Any


def default_out_dir(cfg: SubnetConfig) -> Path:
    """``runs/export/<space>-<first 8 hex digits of the config's SHA-1>``."""
    return Path("runs") / "export" / f"{cfg.space}-{hashlib.sha1(cfg.key().encode()).hexdigest()[:8]}"


def export(request: ExportRequest) -> dict[str, Any]:
    """Measure, export, check and write one sub-network; returns the ``subnet.json`` record."""
    device = resolve_device(request.device)
    cfg = request.source.config
    supernet, payload = load_supernet(request.checkpoint, map_location="cpu")
    supernet = supernet.to(device).eval()
    try:
        supernet.space.validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{_where(request.source)}: {error}") from None
    if cfg.gated and not supernet.with_gates:
        raise ConfigError(f"{_where(request.source)}: gate_thresholds: the supernet in {request.checkpoint} was trained "
                          "without gates; use gate_thresholds null")
    oracle = build_oracle(supernet, payload, request.settings, device)
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
        record = _record(request, cfg, payload, oracle, metrics, check, dynamic_batch, network, resolution, device)
        atomic_save({name: tensor.detach().cpu() for name, tensor in network.state_dict().items()},
                    staging / FILES["weights"])
        atomic_write_text(staging / FILES["readme"], readme(record))
        atomic_write_text(staging / FILES["config"], json.dumps(record, indent=2))
        for key in ("weights", "program", "readme", "config"):  # subnet.json last: it describes the others
            os.replace(staging / FILES[key], out_dir / FILES[key])
    except BaseException:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**record, "out_dir": str(out_dir)}


def measure(network: SuperNet, cfg: SubnetConfig, oracle: Oracle, settings: Any, device: torch.device) -> dict[str, Any]:
    """The search's metrics of a recalibrated network (as :class:`nas.candidates.CandidateEvaluator`)."""
    resolution = oracle.data.resolution
    flops = count_flops(network, resolution)
    effective = float(flops)
    if cfg.gated:
        calibration = oracle.data.calibration[: settings.effective_flops_images]
        effective = effective_flops(network, [b.to(device) for b in calibration.split(oracle.batch_size)],
                                    resolution=resolution)
    evaluator = CandidateEvaluator(network, oracle, flops_budget=None, latency_budget=None,
                                   latency=LatencySettings(**OmegaConf.to_container(settings.latency)),  # type: ignore[arg-type]
                                   effective_flops_images=settings.effective_flops_images, device=device)
    latency = evaluator.measure_latency(network, cfg)
    return {"accuracy": oracle.accuracy(cfg, network), "flops": flops, "effective_flops": effective,
            "params": count_params(network), "latency": latency, "resolution": resolution}


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


def export_program(network: SuperNet, example: torch.Tensor) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` of ``network`` (CPU, eval, masked gates) with a dynamic batch dimension.

    Falls back to a fixed batch of 1 if the dynamic dimension cannot be exported; the second value
    says which it got.
    """
    network = copy.deepcopy(network).cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        # gated blocks keep their last mask as a plain attribute for FLOP bookkeeping; export warns
        # that it is not a buffer, which is right: it is not part of the computation
        warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned during export")
        try:
            return torch.export.export(network, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},)), True
        except Exception:  # noqa: BLE001 - a batch dimension the exporter cannot keep symbolic
            return torch.export.export(network, (example[:1],)), False


@torch.no_grad()
def check_program(program_path: Path, network: SuperNet, reference: SuperNet, images: torch.Tensor) -> dict[str, Any]:
    """Max |difference| of the saved program, the extracted network and the supernet on ``images``.

    Raises :class:`ExportCheckError` if any pair differs by more than :data:`TOLERANCE`.
    """
    program = torch.export.load(str(program_path)).module()
    network_out, reference_out = network(images), reference(images)
    try:
        program_out = program(images)
    except Exception:  # noqa: BLE001 - a program exported with a fixed batch of 1
        program_out = torch.cat([program(image[None]) for image in images])
    single = program(images[:1])  # the batch dimension is really dynamic (or fixed at 1)

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    check = {
        "images": int(images.shape[0]),
        "tolerance": TOLERANCE,
        "program_vs_network": max(diff(program_out, network_out), diff(single, network_out[:1])),
        "network_vs_supernet": diff(network_out, reference_out),
        "program_vs_supernet": diff(program_out, reference_out),
    }
    worst = max(check["program_vs_network"], check["network_vs_supernet"], check["program_vs_supernet"])
    if not worst <= TOLERANCE:  # also catches NaN
        raise ExportCheckError(
            f"export check failed: outputs differ by {worst:.3e} > {TOLERANCE:.0e} (program vs network "
            f"{check['program_vs_network']:.3e}, network vs supernet {check['network_vs_supernet']:.3e}, program vs "
            f"supernet {check['program_vs_supernet']:.3e}); nothing was written"
        )
    return check


def _record(request: ExportRequest, cfg: SubnetConfig, payload: dict[str, Any], oracle: Oracle, metrics: dict[str, Any],
            check: dict[str, Any], dynamic_batch: bool, network: SuperNet, resolution: int,
            device: torch.device) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "config": cfg.to_dict(),
        "metrics": {**metrics, "accuracy_metric": f"weighted kNN top-1 (cosine, k={oracle.k}, T={oracle.temperature}; "
                                                  f"{len(oracle.data.bank)} bank, {len(oracle.data.val)} validation images)"},
        "flop_convention": FLOP_CONVENTION,
        "checkpoint": str(Path(request.checkpoint).resolve()),
        "checkpoint_step": int(payload.get("step", 0)),
        "source": request.source.origin,
        "files": dict(FILES),
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
        "data": trained_data_settings(payload),
        "settings": OmegaConf.to_container(request.settings, resolve=True),
        "provenance": provenance(),
    }


def readme(record: dict[str, Any]) -> str:
    cfg, shape = record["config"], record["input"]["shape"]
    batch = "B" if record["input"]["dynamic_batch"] else "1"
    gates = ("\nGates: exported in masked mode (every channel computed, the dropped ones zeroed), so the program\n"
             "computes the gated outputs without the gathered mode's speedup; gathered (batch-1) execution needs\n"
             "the slimnas network: rebuild it from subnet.json and weights.pt (see nas.evaluate).\n"
             if record["gate_mode"] else "")
    return (
        f"{cfg['space']} sub-network exported by python -m nas.export (slimnas {record['provenance']['version']}).\n\n"
        "Load and run it with plain PyTorch (this project need not be installed):\n\n"
        "    import torch\n"
        f"    model = torch.export.load(\"{FILES['program']}\").module()\n"
        f"    features = model(images)  # images: float32 ({batch}, 3, {shape[2]}, {shape[3]}) -> ({batch}, "
        f"{record['output']['shape'][1]})\n\n"
        f"Images: RGB scaled to [0, 1], then normalised per channel with mean {record['input']['normalization']['mean']}\n"
        f"and std {record['input']['normalization']['std']} (torchvision's Normalize).\n"
        f"Output: {record['output']['meaning']}.\n{gates}\n"
        f"Files: {FILES['config']} (config, metrics, FLOPs by {FLOP_CONVENTION}), {FILES['weights']} (state_dict,\n"
        f"torch.load(..., weights_only=True)), {FILES['program']} (the torch.export program).\n"
    )


def _where(source: ExportSource) -> str:
    origin = source.origin
    return f"trial {origin['number']}" if origin["kind"] == "trial" else str(origin["path"])


# -- reading an export back ---------------------------------------------------------------------------
def load_exported(directory: Path) -> tuple[SuperNet, dict[str, Any]]:
    """The network of an export directory, rebuilt from ``subnet.json`` and ``weights.pt`` (no checkpoint).

    The architecture is the supernet of the config's space narrowed to its channels (what
    :meth:`SuperNet.extract` builds), activated with the config's gate thresholds.
    """
    record = _read_json(directory / FILES["config"], "--export", expected="a directory written by nas.export")
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT or "config" not in record:
        raise ExportError(f"--export: {directory / FILES['config']} is not a {EXPORT_FORMAT} record")
    cfg = _config_from(record["config"], str(directory / FILES["config"]))
    try:
        space = get_space(cfg.space)
    except KeyError as error:
        raise ConfigError(f"{directory / FILES['config']}: space: {error.args[0]}") from None
    try:
        space.validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{directory / FILES['config']}: {error}") from None
    narrow = space.narrow(cfg.channels)
    network = build_supernet(narrow, with_gates=cfg.gated)
    weights = directory / FILES["weights"]
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except FileNotFoundError:
        raise ExportError(f"--export: {weights} does not exist; re-run python -m nas.export") from None
    except Exception as error:  # noqa: BLE001 - a truncated file, tensors of other shapes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"--export: {weights} does not hold this config's weights ({reason[:160]})") from None
    network.set_active(narrow.config(cfg.channels, cfg.gate_thresholds, cfg.resolution))
    network.source_config = cfg
    return network.eval(), record


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nas.export",
        description="Export a sub-network of a trained supernet: subnet.json (config + metrics), weights.pt, and a "
        "torch.export program (model.pt2) that plain PyTorch loads. FLOPs: fvcore, one multiply-add = one flop.",
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
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def request_from_args(args: argparse.Namespace) -> ExportRequest:
    settings = load_settings(args.overrides)
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
    return ExportRequest(source=source, checkpoint=Path(checkpoint), out=args.out, device=args.device, settings=settings)


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
    print(f"  input {record['input']['shape']} ({'dynamic' if record['input']['dynamic_batch'] else 'fixed'} batch); "
          f"files: {', '.join(record['files'].values())}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides may sit between options
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        record = export(request_from_args(args))
    except (ExportError, ConfigError, SearchError, CheckpointError, DataError) as error:
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2
    except ExportCheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_summary(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
