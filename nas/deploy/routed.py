"""Exporting a routed sub-network: one program per piece, the routing table, and a plain-PyTorch runner.

A routed network (:class:`supernet.nn.routing.RoutedNetwork`) decides per input which branch runs next, so it
is no single static graph. ``nas.export`` writes it as its pieces, each a ``torch.export`` program with a
dynamic batch dimension (and, with ``--onnx``, an ONNX model): the prefix, every router (once per input width
it can receive) and every branch; ``routing.json`` says how they chain (router blocks, thresholds, levels,
which branch each route prefix runs, the feature width), and ``routed_model.py`` (plain PyTorch, or
onnxruntime; written into the export) runs them: per router, the narrowest level whose probability of
sufficing reaches the threshold, else the widest; inputs of equal route run as one batch; the features are
the route's, zero-padded to the widest route's width. The export is checked before it is kept: the runner on
the exported programs (and the ONNX models) against the routed network, and the routed network against the
supernet at each route's config, on the check images.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from nas.deploy.program import TOLERANCE, ExportCheckError, export_program
from supernet.nn.routing import RoutedNetwork, head_key

__all__ = ["PIECES_DIR", "ROUTED_FILES", "RUNNER", "TABLE", "check_routed", "export_routed_pieces", "load_runner",
           "routing_table"]

PIECES_DIR = "pieces"
TABLE = "routing.json"
RUNNER = "routed_model.py"
ROUTED_FILES = {"config": "subnet.json", "weights": "weights.pt", "pieces": PIECES_DIR, "table": TABLE,
                "runner": RUNNER, "readme": "README.txt"}


def routing_table(network: RoutedNetwork) -> dict[str, Any]:
    """What chains the pieces: JSON-able, read by ``routed_model.py``."""
    widths = {(): network.prefix_width, **network.widths_of}
    routers = {}
    for depth, block in enumerate(network.router_blocks):
        if network.decides(depth):
            upstream = {route for route in widths if len(route) == depth}
            routers[block] = sorted({widths[route] for route in upstream})
    return {
        "format": "slimnas-routed/1",
        "router_blocks": list(network.router_blocks),
        "thresholds": list(network.thresholds),
        "logit_thresholds": list(network.logit_thresholds),
        "levels": list(network.levels),
        "router_inputs": {block: [head_key(block, c) for c in channels] for block, channels in routers.items()},
        "branch_of": {",".join(map(str, route)): key for route, key in sorted(network.branch_of.items())},
        "feature_dim": network.feature_dim,
        "rule": "per router: the narrowest level whose logit >= logit_threshold (= log(t / (1 - t)) of its "
                "threshold t, in float32), else the widest; a router block whose threshold is null runs no router "
                "and keeps the level before it",
    }


def _pieces(network: RoutedNetwork, images: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Every piece and an example input for it (of the width it reads; two images, for a dynamic batch)."""
    pieces: dict[str, tuple[nn.Module, torch.Tensor]] = {"prefix": (network.prefix, images[:2])}
    with torch.no_grad():
        for route in network.routes():
            hidden = network.prefix(images[:2])
            for depth, level in enumerate(route):
                if network.decides(depth):
                    key = head_key(network.router_blocks[depth], hidden.shape[1])
                    pieces.setdefault(key, (network.heads[key], hidden))
                key = network.branch_of[route[: depth + 1]]
                pieces.setdefault(key, (network.branches[key], hidden))
                hidden = network.branches[key](hidden)
    return pieces


def export_routed_pieces(network: RoutedNetwork, images: torch.Tensor, directory: Path) -> bool:
    """``torch.export`` every piece into ``directory / pieces``; True if every one kept a dynamic batch."""
    (directory / PIECES_DIR).mkdir(parents=True, exist_ok=True)
    dynamic = True
    for name, (piece, example) in _pieces(network.cpu().eval(), images.cpu()).items():
        program, kept = export_program(copy.deepcopy(piece), example)  # type: ignore[arg-type]
        torch.export.save(program, directory / PIECES_DIR / f"{name}.pt2")
        dynamic = dynamic and kept
    return dynamic


def export_routed_onnx(network: RoutedNetwork, images: torch.Tensor, directory: Path) -> dict[str, Any]:
    """Every piece as an ONNX model beside its program (``pieces/<name>.onnx``); the exporter of each."""
    from nas.deploy.onnx_model import export_onnx

    exporters = {}
    for name, (piece, example) in _pieces(network.cpu().eval(), images.cpu()).items():
        exported = export_onnx(copy.deepcopy(piece), example, directory / PIECES_DIR / f"{name}.onnx")  # type: ignore[arg-type]
        exporters[name] = {"exporter": exported.exporter, "opset": exported.opset, "dynamic_batch": exported.dynamic_batch}
    return exporters


def load_runner(directory: Path) -> ModuleType:
    """``routed_model.py`` of an export directory, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"routed_model_{abs(hash(str(directory)))}", directory / RUNNER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def check_routed(directory: Path, network: RoutedNetwork, references: dict[tuple[int, ...], nn.Module],
                 images: torch.Tensor, *, onnx: bool = False) -> dict[str, Any]:
    """Max |difference| of the runner on the exported pieces vs the routed network, and of the routed network vs
    the supernet at each input's route (``references``: route -> the supernet set to that route's config,
    recalibrated); the routes must agree too. Raises :class:`ExportCheckError` beyond :data:`TOLERANCE`."""
    network = network.cpu().eval()
    expected = network(images)
    levels = network.last_levels.clone()  # type: ignore[union-attr]
    runner = load_runner(directory)
    backends = ["torch", "onnxruntime"] if onnx else ["torch"]
    check: dict[str, Any] = {"images": int(images.shape[0]), "tolerance": TOLERANCE,
                             "routes": sorted({tuple(row) for row in levels.tolist()})}
    for backend in backends:
        model = runner.RoutedModel(directory, backend=backend)
        features, taken = model(images)
        single = torch.cat([model(image[None])[0] for image in images])
        check[f"{backend}_vs_network"] = max(float((features - expected).abs().max()), float((single - expected).abs().max()))
        check[f"{backend}_routes_agree"] = bool(torch.equal(taken.cpu(), levels))
    worst_reference = 0.0
    for route, reference in references.items():
        rows = (levels == torch.tensor(route)).all(dim=1)
        if rows.any():
            out = reference(images[rows])
            worst_reference = max(worst_reference, float((out - expected[rows][:, : out.shape[1]]).abs().max()))
    check["network_vs_supernet"] = worst_reference
    worst = max(check[f"{b}_vs_network"] for b in backends)
    if not (worst <= TOLERANCE and worst_reference <= TOLERANCE) or not all(check[f"{b}_routes_agree"] for b in backends):
        raise ExportCheckError(
            f"export check failed: the exported pieces differ from the routed network by {worst:.3e}, the routed network "
            f"from the supernet by {worst_reference:.3e} (tolerance {TOLERANCE:.0e}), routes agree "
            f"{[check[f'{b}_routes_agree'] for b in backends]}; nothing was written")
    return check


def write_runner(directory: Path) -> None:
    (directory / RUNNER).write_text(RUNNER_SOURCE)


RUNNER_SOURCE = '''"""A routed sub-network exported by slimnas's python -m nas.export: plain PyTorch (or onnxruntime) runs it.

    from routed_model import RoutedModel
    model = RoutedModel("path/to/export")               # or backend="onnxruntime" with --onnx exports
    features, levels = model(images)                    # images: float32 (B, 3, R, R), normalised

routing.json says how the pieces in pieces/ chain; per router the narrowest width level whose probability of
sufficing reaches the router's threshold (its logit reaches the threshold's logit), else the widest (a router
block whose threshold is null runs no router: its blocks keep the level before); inputs of one route run as
one batch.
"""

import json
import pathlib

import torch


class RoutedModel:
    def __init__(self, directory, backend="torch"):
        directory = pathlib.Path(directory)
        self.table = json.loads((directory / "routing.json").read_text())
        names = {"prefix", *self.table["branch_of"].values()}
        for inputs in self.table["router_inputs"].values():
            names.update(inputs)
        self.pieces = {name: self._load(directory / "pieces" / name, backend) for name in names}
        self.branch_of = {tuple(int(level) for level in route.split(",")): key
                          for route, key in self.table["branch_of"].items()}

    @staticmethod
    def _load(path, backend):
        if backend == "torch":
            return torch.export.load(str(path) + ".pt2").module()
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path) + ".onnx", providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0])

    def __call__(self, images):
        """Features (B, D) zero-padded to the widest route's width, and each image's level per router (B, R)."""
        blocks, count = self.table["router_blocks"], images.shape[0]
        features = torch.zeros(count, self.table["feature_dim"])
        levels = torch.zeros(count, len(blocks), dtype=torch.long)
        groups = [(torch.arange(count), (), self.pieces["prefix"](images))]
        while groups:
            rows, route, hidden = groups.pop()
            if len(route) == len(blocks):
                pooled = hidden.mean(dim=(2, 3))
                features[rows, : pooled.shape[1]] = pooled
                levels[rows] = torch.tensor(route)
                continue
            threshold = self.table["logit_thresholds"][len(route)]
            if threshold is None:
                route = (*route, route[-1])
                groups.append((rows, route, self.pieces[self.branch_of[route]](hidden)))
                continue
            block = blocks[len(route)]
            key = "router_%s_in%d" % (block.replace(".", "_"), hidden.shape[1])
            suffices = self.pieces[key](hidden).float() >= threshold
            chosen = torch.where(suffices.any(dim=1), suffices.to(torch.int8).argmax(dim=1),
                                 torch.full((hidden.shape[0],), suffices.shape[1]))
            for level in chosen.unique().tolist():
                mask = chosen == level
                branch = self.pieces[self.branch_of[(*route, level)]]
                groups.append((rows[mask], (*route, level), branch(hidden[mask])))
        return features, levels
'''
