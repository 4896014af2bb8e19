"""``model.onnx``: the exported sub-network as an ONNX model, checked with onnxruntime before it is kept.

``python -m nas.export --onnx`` writes it beside ``model.pt2``. It comes from the same network
(extracted, BatchNorm recalibrated, gates in masked mode: see :mod:`nas.deploy.program`) through
``torch.onnx.export``: first the dynamo-based exporter (``torch.export`` + onnxscript) with a dynamic
batch dimension, else the TorchScript exporter with a dynamic batch axis, else the dynamo exporter at
a fixed batch of 1; :class:`OnnxExport` records which.

The check (:func:`check_onnx`) runs the file in onnxruntime (``CPUExecutionProvider``) and compares
it with the supernet at ``set_active(config)`` (``nas.export``'s reference). The export fails if

* on the check images ``model.pt2`` is checked on, at batch N and at batch 1, any feature differs
  by more than ``nas.deploy.program.TOLERANCE`` (``max_abs_diff``), or any output is not finite;
* on up to :data:`AGREEMENT_IMAGES` of the oracle's validation images, fewer than
  :data:`MIN_AGREEMENT` of them have features within that tolerance, or fewer than that share have
  the same kNN top-1 from the ONNX features as from the supernet's (``top1_agreement``; the oracle's
  kNN: its bank embedded by the supernet at the config, its k and temperature). Not all: a hard gate
  whose keep-probability lies within float rounding of its threshold can flip a channel between two
  runtimes (a 2-step ``tiny`` checkpoint, its untrained gates near 0.5, thresholds at 0.5: one image
  in 200 moved by 0.18), and a kNN vote can tie; a defect of the ONNX model moves nearly every image.

``onnx``, ``onnxscript`` and ``onnxruntime`` are the optional extra ``slimnas[onnx]``; they are imported
only here and only when asked for (:func:`require_onnx`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nas.deploy.program import TOLERANCE, ExportCheckError
from nas.deploy.sources import ExportError
from search_spaces import first_line
from supernet.evaluation.knn import embed_tensor, knn_predict
from supernet.nn.models import SuperNet

if TYPE_CHECKING:
    from nas.study.oracle import Oracle

__all__ = ["AGREEMENT_IMAGES", "INPUT_NAME", "MIN_AGREEMENT", "ONNX_FILE", "OUTPUT_NAME", "PROVIDER", "KnnProbe", "OnnxCheck",
           "OnnxExport", "check_onnx", "export_onnx", "knn_probe", "onnx_record", "require_onnx", "run_onnx"]

ONNX_FILE = "model.onnx"
INPUT_NAME, OUTPUT_NAME = "images", "features"
PROVIDER = "CPUExecutionProvider"
AGREEMENT_IMAGES = 256  # validation images the kNN top-1 agreement is taken over: a few seconds of CPU at most
RUN_BATCH = 64  # images per onnxruntime call on the agreement images
# Share of the validation images that must match: a hard gate whose keep-probability lies within float
# rounding of its threshold may flip one channel between two runtimes (neither wrong), and so may a kNN
# vote tie; a defect of the ONNX model moves nearly every image.
MIN_AGREEMENT = 0.99
REQUIRED = ("onnx", "onnxscript", "onnxruntime")
NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript", "onnx_ir")


def require_onnx() -> dict[str, str]:
    """The versions of ``onnx``, ``onnxscript`` and ``onnxruntime``; an :class:`ExportError` naming the
    missing ones and ``pip install "slimnas[onnx]"`` if any cannot be imported."""
    versions, missing = {}, []
    for name in REQUIRED:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"--onnx: {', '.join(missing)} not installed; install the ONNX extra with "
                          "pip install \"slimnas[onnx]\" (or leave out --onnx)")
    return versions


@dataclass(frozen=True)
class OnnxExport:
    """Where and how ``model.onnx`` was written.

    ``exporter``: ``"dynamo"`` (``torch.onnx.export(..., dynamo=True)``) or ``"torchscript"``;
    ``fallback``: why the preferred path (dynamo, dynamic batch) was not taken, else ``None``.
    """

    path: Path
    exporter: str
    opset: int
    dynamic_batch: bool
    fallback: str | None


@dataclass(frozen=True)
class KnnProbe:
    """The oracle's kNN, with its bank embedded by the supernet at the config.

    ``bank_features`` (B, D) and ``bank_labels`` (B,) vote for ``images`` (V, 3, R, R), validation
    images; ``k`` neighbours, weights ``exp(cosine / temperature)``.
    """

    bank_features: torch.Tensor
    bank_labels: torch.Tensor
    images: torch.Tensor
    num_classes: int
    k: int
    temperature: float

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """kNN top-1 class (V,) of query features (V, D)."""
        return knn_predict(self.bank_features, self.bank_labels, features, num_classes=self.num_classes, k=self.k,
                           temperature=self.temperature)


@dataclass(frozen=True)
class OnnxCheck:
    """The onnxruntime run of ``model.onnx`` against the supernet at the config.

    ``max_abs_diff``: max |ONNX - supernet| on the ``check_images`` at batch N and at batch 1 (the
    latter alone: ``batch1_max_abs_diff``); must be at most ``tolerance``. On the
    ``agreement_images`` validation images: ``validation_within_tolerance``, the fraction whose
    features are within ``tolerance`` (``validation_max_abs_diff`` the largest difference), and
    ``top1_agreement``, the fraction whose kNN top-1 from the ONNX features equals the one from the
    supernet's; both must be at least ``min_agreement``. ``finite``: every output was finite.
    """

    onnxruntime: str
    provider: str
    check_images: int
    max_abs_diff: float
    batch1_max_abs_diff: float
    tolerance: float
    agreement_images: int
    top1_agreement: float
    validation_within_tolerance: float
    validation_max_abs_diff: float
    min_agreement: float
    finite: bool

    @property
    def passed(self) -> bool:
        return (self.finite and self.max_abs_diff <= self.tolerance and self.top1_agreement >= self.min_agreement
                and self.validation_within_tolerance >= self.min_agreement)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: its progress lines (stdout), warnings and log records."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(network: SuperNet, example: torch.Tensor, path: Path) -> OnnxExport:
    """Write ``network`` (CPU, eval; gates in the mode it is in) as one ONNX file at ``path``.

    ``example``: images (N, 3, R, R), N >= 2 so the batch dimension can be kept symbolic. Input
    ``images`` (B, 3, R, R) float32, output ``features`` (B, D). Tries, in order: the dynamo exporter
    with a dynamic batch, the TorchScript exporter with a dynamic batch axis, the dynamo exporter at
    batch 1. Raises :class:`ExportCheckError` (one line) if none of them succeeds. Weights are stored
    inside the file (no external data), which ONNX allows up to 2 GB.
    """
    network = copy.deepcopy(network).cpu().eval()
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}

    def dynamo_dynamic() -> None:
        program = torch.onnx.export(network, (example,), dynamo=True, verbose=False, optimize=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
        program.save(str(path), external_data=False)

    def torchscript_dynamic() -> None:
        torch.onnx.export(network, (example,), str(path), dynamo=False, verbose=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)

    def dynamo_fixed() -> None:
        program = torch.onnx.export(network, (example[:1],), dynamo=True, verbose=False, optimize=True, **names)
        program.save(str(path), external_data=False)

    attempts: list[tuple[str, bool, Callable[[], None]]] = [
        ("dynamo", True, dynamo_dynamic), ("torchscript", True, torchscript_dynamic), ("dynamo", False, dynamo_fixed)]
    failures: list[str] = []
    for exporter, dynamic_batch, attempt in attempts:
        try:
            with _quiet(), torch.no_grad():
                attempt()
        except Exception as error:  # noqa: BLE001 - an operator or a symbolic shape this path cannot export
            failures.append(f"{exporter}{'' if dynamic_batch else ' (batch 1)'}: {first_line(error, limit=120)}")
            path.unlink(missing_ok=True)
            continue
        opset, symbolic_batch = _inspect(path)
        return OnnxExport(path=path, exporter=exporter, opset=opset, dynamic_batch=symbolic_batch,
                          fallback="; ".join(failures) or None)
    raise ExportCheckError(f"ONNX export failed ({'; '.join(failures)}); nothing was written")


def _inspect(path: Path) -> tuple[int, bool]:
    """The default-domain (``ai.onnx``) opset the file imports, and whether its input's batch
    dimension is symbolic (what the file says, not what the exporter was asked for)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    return opset, batch.HasField("dim_param") or not batch.HasField("dim_value")


def run_onnx(session: Any, images: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    """Features (N, D) of ``images`` (N, 3, R, R) from an onnxruntime session, ``batch_size`` at a time."""
    outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: chunk.contiguous().numpy()})[0]
               for chunk in images.split(batch_size)]
    return torch.cat([torch.from_numpy(output) for output in outputs])


def knn_probe(reference: SuperNet, oracle: Oracle, *, device: torch.device, images: int = AGREEMENT_IMAGES) -> KnnProbe:
    """The oracle's kNN for the agreement check: its bank embedded by ``reference`` (the supernet at the
    config) on ``device``, and its first ``images`` validation images (CPU)."""
    embedder = reference if device.type == "cpu" else copy.deepcopy(reference).to(device)
    bank = embed_tensor(embedder, oracle.data.bank, batch_size=oracle.batch_size, device=device)
    return KnnProbe(bank_features=bank, bank_labels=oracle.data.bank_labels.cpu(),
                    images=oracle.data.val[: min(images, len(oracle.data.val))].cpu(),
                    num_classes=oracle.data.num_classes, k=oracle.k, temperature=oracle.temperature)


@torch.no_grad()
def check_onnx(export: OnnxExport, reference: SuperNet, images: torch.Tensor, probe: KnnProbe, *,
               tolerance: float = TOLERANCE, min_agreement: float = MIN_AGREEMENT,
               runner: Callable[..., torch.Tensor] = run_onnx) -> OnnxCheck:
    """Run ``export.path`` in onnxruntime on the CPU and compare it with ``reference`` (rules: module docstring).

    ``reference``: the supernet at ``set_active(config)`` on the CPU, eval mode; ``images``: the check
    images (N, 3, R, R), run at batch N (one at a time if the file has a fixed batch) and at batch 1;
    ``probe``: the kNN and the validation images (V, 3, R, R) for the agreement; ``runner``: how
    features come out of a session (:func:`run_onnx`). Raises :class:`ExportCheckError` (one line)
    if the check fails.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no notes about initializers on stderr
    try:
        session = onnxruntime.InferenceSession(str(export.path), options, providers=[PROVIDER])
        batched = runner(session, images, batch_size=images.shape[0] if export.dynamic_batch else 1)
        single = runner(session, images, batch_size=1)
        onnx_val = runner(session, probe.images, batch_size=RUN_BATCH if export.dynamic_batch else 1)
    except Exception as error:  # noqa: BLE001 - onnxruntime's errors have no common base class
        raise ExportCheckError(f"ONNX check failed: onnxruntime {onnxruntime.__version__} cannot run "
                               f"{export.path.name} ({first_line(error, limit=160)}); nothing was written") from None
    expected = reference(images)
    expected_val = embed_tensor(reference, probe.images, batch_size=RUN_BATCH, device="cpu")
    outputs = (batched, single, onnx_val)
    finite = all(output.shape[0] > 0 and bool(torch.isfinite(output).all()) for output in outputs)
    per_image = _abs_diff(onnx_val, expected_val)  # (V,)

    check = OnnxCheck(
        onnxruntime=onnxruntime.__version__, provider=PROVIDER, check_images=int(images.shape[0]),
        max_abs_diff=float(torch.cat([_abs_diff(batched, expected), _abs_diff(single, expected)]).max()),  # NaN wins
        batch1_max_abs_diff=float(_abs_diff(single, expected).max()), tolerance=tolerance,
        agreement_images=int(probe.images.shape[0]),
        top1_agreement=int((probe.predict(onnx_val) == probe.predict(expected_val)).sum()) / len(per_image),
        validation_within_tolerance=int((per_image <= tolerance).sum()) / len(per_image),
        validation_max_abs_diff=float(per_image.max()), min_agreement=min_agreement, finite=finite,
    )
    if not check.passed:
        raise ExportCheckError(
            f"ONNX check failed: onnxruntime vs the supernet: max |difference| {check.max_abs_diff:.3e} on "
            f"{check.check_images} check images (tolerance {tolerance:.0e}); on {check.agreement_images} validation "
            f"images {check.validation_within_tolerance:.2%} within tolerance and kNN top-1 agreement "
            f"{check.top1_agreement:.2%} (both must be >= {min_agreement:.0%})"
            f"{'' if finite else '; non-finite outputs'}; nothing was written"
        )
    return check


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max |a - b| per image (N,) of features (N, D); ``nan`` where either is not finite or shapes differ."""
    if a.shape != b.shape:
        return torch.full((max(a.shape[0], 1),), math.nan)
    diff = (a.float() - b.float()).abs().amax(dim=1)
    return diff.masked_fill(~(torch.isfinite(a).all(dim=1) & torch.isfinite(b).all(dim=1)), math.nan)


def onnx_record(export: OnnxExport, check: OnnxCheck, *, gate_mode: str | None) -> dict[str, Any]:
    """The ``"onnx"`` entry of ``subnet.json``."""
    versions = require_onnx()
    return {
        "file": export.path.name,
        "exporter": f"torch.onnx ({export.exporter})",
        "dynamo": export.exporter == "dynamo",
        "fallback": export.fallback,
        "opset": export.opset,
        "dynamic_batch": export.dynamic_batch,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "gate_mode": gate_mode,
        "versions": {"torch": torch.__version__, "onnx": versions["onnx"], "onnxscript": versions["onnxscript"]},
        **asdict(check),
    }
