"""The exported files: the ``torch.export`` program, its check against the supernet, reading it back.

``model.pt2`` is a self-contained ``torch.export`` program with a dynamic batch dimension, which
``torch.export.load(path).module()`` runs without this project installed. Gated networks are
exported in masked mode: the gates compute a 0/1 mask per input and every channel is computed,
then the dropped ones are zeroed. Gathered mode (batch 1, only the kept channels' weights) has
data-dependent shapes, which ``torch.export`` does not capture; the masked program computes the
same outputs, but without the gathered mode's savings. ``model.onnx`` (``--onnx``,
:mod:`nas.deploy.onnx_model`) is exported from the same network, so it too is in masked mode.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch

from nas.deploy.sources import ExportError, config_from, read_json
from search_spaces import ConfigError, first_line, get_space
from supernet.cli import CommandFailed
from supernet.nn.flops import FLOP_CONVENTION
from supernet.nn.gates import GateOptions
from supernet.nn.models import SuperNet, build_supernet

__all__ = ["CHECK_IMAGES", "EXPORT_FORMAT", "FILES", "TOLERANCE", "ExportCheckError", "check_program", "export_program",
           "load_exported", "readme"]

EXPORT_FORMAT = "slimnas-subnet/1"
FILES = {"config": "subnet.json", "weights": "weights.pt", "program": "model.pt2", "readme": "README.txt"}
CHECK_IMAGES = 8  # validation images the program, the extracted network and the supernet are compared on
TOLERANCE = 1e-4  # max |difference| of their outputs


class ExportCheckError(CommandFailed):
    """The exported program does not compute what the supernet computes for the config (a defect)."""


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


def readme(record: dict[str, Any]) -> str:
    cfg, shape = record["config"], record["input"]["shape"]
    batch = "B" if record["input"]["dynamic_batch"] else "1"
    onnx = record.get("onnx")
    programs = f"{FILES['program']} and\n{onnx['file']} compute" if onnx else "the program\ncomputes"
    gates = (f"\nGates: exported in masked mode (every channel computed, the dropped ones zeroed), so {programs} "
             "the gated outputs without the gathered mode's speedup; gathered (batch-1) execution needs\n"
             "the slimnas network: rebuild it from subnet.json and weights.pt (see nas.evaluate).\n"
             if record["gate_mode"] else "")
    onnx_lines = (
        "\nOr with onnxruntime (pip install onnxruntime):\n\n"
        "    import onnxruntime\n"
        f"    session = onnxruntime.InferenceSession(\"{onnx['file']}\", providers=[\"CPUExecutionProvider\"])\n"
        f"    features = session.run([\"{onnx['output']}\"], {{\"{onnx['input']}\": images}})[0]  # images: numpy float32 "
        f"({'B' if onnx['dynamic_batch'] else '1'}, 3, {shape[2]}, {shape[3]})\n"
        f"\n{onnx['file']}: {onnx['exporter']}, opset {onnx['opset']}, checked with onnxruntime {onnx['onnxruntime']}\n"
        f"against the supernet (max |difference| {onnx['max_abs_diff']:.1e}, kNN top-1 agreement "
        f"{onnx['top1_agreement']:.0%}).\n"
        if onnx else "")
    return (
        f"{cfg['space']} sub-network exported by python -m nas.export (slimnas {record['provenance']['version']}).\n\n"
        "Load and run it with plain PyTorch (this project need not be installed):\n\n"
        "    import torch\n"
        f"    model = torch.export.load(\"{FILES['program']}\").module()\n"
        f"    features = model(images)  # images: float32 ({batch}, 3, {shape[2]}, {shape[3]}) -> ({batch}, "
        f"{record['output']['shape'][1]})\n{onnx_lines}\n"
        f"Images: RGB scaled to [0, 1], then normalised per channel with mean {record['input']['normalization']['mean']}\n"
        f"and std {record['input']['normalization']['std']} (torchvision's Normalize).\n"
        f"Output: {record['output']['meaning']}.\n{gates}\n"
        f"Files: {FILES['config']} (config, metrics, FLOPs by {FLOP_CONVENTION}), {FILES['weights']} (state_dict,\n"
        f"torch.load(..., weights_only=True)), {FILES['program']} (the torch.export program)"
        + (f", {onnx['file']} (the ONNX model)" if onnx else "") + ".\n"
    )


def load_exported(directory: Path) -> tuple[SuperNet, dict[str, Any]]:
    """The network of an export directory, rebuilt from ``subnet.json`` and ``weights.pt`` (no checkpoint).

    The architecture is the supernet of the config's space narrowed to its channels (what
    :meth:`SuperNet.extract` builds), activated with the config's gate thresholds.
    """
    record = read_json(directory / FILES["config"], "--export", expected="a directory written by nas.export")
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT or "config" not in record:
        raise ExportError(f"--export: {directory / FILES['config']} is not a {EXPORT_FORMAT} record")
    if "routing" in record:
        raise ExportError(f"--export: {directory} holds a routed network (its pieces and routing.json, run by "
                          "routed_model.py); nas.evaluate evaluates static and gated exports, and subnet.json holds "
                          "the routed network's kNN per route (metrics.routes)")
    cfg = config_from(record["config"], str(directory / FILES["config"]))
    try:
        space = get_space(cfg.space)
    except KeyError as error:
        raise ConfigError(f"{directory / FILES['config']}: space: {error.args[0]}") from None
    try:
        space.validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{directory / FILES['config']}: {error}") from None
    narrow = space.narrow(cfg.channels)
    options = GateOptions(**record.get("gate_options", {}))
    network = build_supernet(narrow, with_gates=cfg.gated, gate_options=options if cfg.gated else None)
    weights = directory / FILES["weights"]
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except FileNotFoundError:
        raise ExportError(f"--export: {weights} does not exist; re-run python -m nas.export") from None
    except Exception as error:  # noqa: BLE001 - a truncated file, tensors of other shapes
        raise ExportError(f"--export: {weights} does not hold this config's weights ({first_line(error, limit=160)})") from None
    network.set_active(narrow.config(cfg.channels, cfg.gate_thresholds, cfg.resolution))
    network.source_config = cfg
    return network.eval(), record
