"""The runtimes a network is timed on: the program it would be deployed as, at one input shape and precision.

==============  ========  ==================================================================  =========================
``runtime``     devices   what runs                                                           timed with
==============  ========  ==================================================================  =========================
``eager``       cpu cuda  the extracted network op by op (PyTorch eager; one launch per op)   perf_counter / CUDA events
``compiled``    cpu cuda  ``torch.compile`` of it (Inductor, static shapes, whole graph),     perf_counter / CUDA events
                          compiled before timing
``graph``       cuda      it captured in a ``torch.cuda.CUDAGraph`` (warm-up on a side        CUDA events around
                          stream, capture on the same stream, from a static input buffer)     ``replay()``
``onnxruntime`` cpu       it exported to ONNX at the timed batch size, in an                  perf_counter
                          ``InferenceSession`` with its input bound once (IO binding)
``tensorrt``    cuda      ``torch_tensorrt.compile`` of it (the optional ``tensorrt`` extra)  CUDA events
==============  ========  ==================================================================  =========================

Precision (``dtype``): ``float32``, ``bfloat16`` or ``float16``; the network and its inputs are cast
(a copy: the caller's network is left as it was). Defaults (:func:`resolve_runtime`): on CUDA
``graph`` in ``float16`` (what NVIDIA GPUs serve), on CPU ``eager`` in ``float32``. Half precision
on a CPU is refused unless oneDNN has native kernels for it there; ``onnxruntime`` runs
``float32`` models. On CUDA in half precision the network runs ``channels_last`` (tensor cores
read NHWC).

Gates: gathered execution (only the kept channels; data-dependent shapes and one host sync per
gated block) runs only ``eager`` at batch 1; every other runtime or batch runs gated networks
masked (every channel computed, then zeroed), which saves nothing (:func:`gate_mode`).
"""

from __future__ import annotations

import copy
import importlib
import platform
from typing import Any, Literal

import torch
from torch import nn

from search_spaces import UserError

__all__ = ["CPU_RUNTIMES", "CUDA_RUNTIMES", "DTYPES", "RUNTIMES", "LatencyRuntimeError", "ONNX_INSTALL",
           "TENSORRT_INSTALL", "as_torch_dtype", "gate_mode", "memory_format", "resolve_runtime",
           "runtime_network", "runtime_versions"]

Runtime = Literal["eager", "compiled", "graph", "onnxruntime", "tensorrt"]
RUNTIMES: tuple[str, ...] = ("eager", "compiled", "graph", "onnxruntime", "tensorrt")
CPU_RUNTIMES: tuple[str, ...] = ("eager", "compiled", "onnxruntime")
CUDA_RUNTIMES: tuple[str, ...] = ("eager", "compiled", "graph", "tensorrt")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DEFAULTS: dict[str, tuple[str, str]] = {"cpu": ("eager", "float32"), "cuda": ("graph", "float16")}
ONNX_INSTALL = 'pip install "slimnas[onnx]"'
TENSORRT_INSTALL = 'pip install "slimnas[tensorrt]"'


class LatencyRuntimeError(UserError):
    """A runtime or precision that cannot time on this device; one line saying what would."""


def resolve_runtime(runtime: str = "auto", dtype: str = "auto", *, device: str | torch.device,
                    runtime_key: str = "latency.runtime", dtype_key: str = "latency.dtype") -> tuple[str, str]:
    """``(runtime, dtype)`` to time with on ``device``: ``auto`` replaced by the device's default, the pair checked.

    Raises :class:`LatencyRuntimeError` (one line, naming the setting -- ``runtime_key`` or ``dtype_key``, as the
    user wrote it -- and what would work) for a runtime or precision this device cannot run, or whose package
    is missing.
    """
    kind = torch.device(device).type
    if kind not in DEFAULTS:
        raise LatencyRuntimeError(f"{runtime_key}: device {str(device)!r} cannot be timed; use cpu or cuda")
    default_runtime, default_dtype = DEFAULTS[kind]
    runtime = default_runtime if runtime == "auto" else runtime
    dtype = default_dtype if dtype == "auto" else dtype
    allowed = CPU_RUNTIMES if kind == "cpu" else CUDA_RUNTIMES
    if runtime not in RUNTIMES:
        raise LatencyRuntimeError(f"{runtime_key}: {runtime!r} is not a runtime; expected auto or one of "
                                  f"{', '.join(RUNTIMES)}")
    if runtime not in allowed:
        raise LatencyRuntimeError(f"{runtime_key}: {runtime} does not run on {kind}; on {kind} use one of "
                                  f"{', '.join(allowed)}")
    if dtype not in DTYPES:
        raise LatencyRuntimeError(f"{dtype_key}: {dtype!r} is not a precision; expected auto or one of {', '.join(DTYPES)}")
    if runtime == "onnxruntime":
        if dtype != "float32":
            raise LatencyRuntimeError(f"{dtype_key}: onnxruntime here runs float32 models (its CPU provider has no "
                                      f"{dtype} convolutions); use {dtype_key}=float32")
        if _module("onnxruntime") is None:
            raise LatencyRuntimeError(f"{runtime_key}: onnxruntime is not installed; {ONNX_INSTALL}")
    if runtime == "tensorrt" and _module("torch_tensorrt") is None:
        raise LatencyRuntimeError(f"{runtime_key}: tensorrt needs torch_tensorrt, which is not installed; "
                                  f"{TENSORRT_INSTALL} (or use {runtime_key}=graph)")
    if kind == "cpu" and dtype != "float32" and not _cpu_supports(dtype):
        raise LatencyRuntimeError(f"{dtype_key}: {dtype} on this CPU ({platform.machine()}) has no native oneDNN "
                                  f"kernels, so its latency would measure an emulation; use {dtype_key}=float32"
                                  + ("" if dtype == "bfloat16" or not _cpu_supports("bfloat16") else " or bfloat16"))
    if kind == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise LatencyRuntimeError(f"{dtype_key}: this GPU has no bfloat16; use {dtype_key}=float16 or float32")
    return runtime, dtype


def _cpu_supports(dtype: str) -> bool:
    """Whether oneDNN has native kernels for ``dtype`` on this CPU (AVX-512 BF16 / AMX, AVX-512 FP16)."""
    check = {"bfloat16": "_is_mkldnn_bf16_supported", "float16": "_is_mkldnn_fp16_supported"}[dtype]
    try:
        return bool(getattr(torch.ops.mkldnn, check)())
    except (AttributeError, RuntimeError):
        return False


def _module(name: str) -> Any:
    """The module ``name`` if it imports, else None."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def as_torch_dtype(dtype: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def gate_mode(runtime: str, batch_size: int) -> Literal["gathered", "masked"]:
    """How gated networks run on ``runtime`` at ``batch_size``: gathered only eager at batch 1 (its shapes depend
    on the input, which a captured graph, a compiled program or an exported model cannot follow)."""
    return "gathered" if runtime == "eager" and batch_size == 1 else "masked"


def memory_format(device: str | torch.device, dtype: str) -> torch.memory_format:
    """``channels_last`` on CUDA in half precision (tensor cores read NHWC), else the contiguous NCHW layout."""
    half = dtype in ("float16", "bfloat16")
    return torch.channels_last if torch.device(device).type == "cuda" and half else torch.contiguous_format


def runtime_network(model: nn.Module, *, device: torch.device, dtype: str) -> nn.Module:
    """``model`` ready to time on ``device`` in ``dtype``, eval mode.

    float32 in NCHW: ``model`` itself, moved (callers time the network they hold, as before). Anything else:
    a cast copy, so the caller's network keeps its precision and layout for what comes after (accuracy).
    Moved and cast outside inference mode, even when called inside it: moved there, the caller's
    parameters would become inference tensors, which BatchNorm recalibration or training of the same
    network later refuses to update.
    """
    layout = memory_format(device, dtype)
    with torch.inference_mode(False):
        if dtype == "float32" and layout == torch.contiguous_format:
            return model.to(device).eval()
        network = copy.deepcopy(model).to(device=device, dtype=as_torch_dtype(dtype)).eval()
        return network.to(memory_format=layout) if layout != torch.contiguous_format else network


def runtime_versions(runtime: str, device: str | torch.device) -> dict[str, str | None]:
    """Versions of what produces a figure on ``runtime``: torch, Python, and CUDA/cuDNN, onnxruntime or
    torch_tensorrt where they take part."""
    versions: dict[str, str | None] = {"torch": torch.__version__, "python": platform.python_version()}
    if torch.device(device).type == "cuda":
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        versions.update({"cuda": torch.version.cuda, "cudnn": None if cudnn is None else str(cudnn)})
    if runtime == "onnxruntime":
        module = _module("onnxruntime")
        versions["onnxruntime"] = None if module is None else str(module.__version__)
    if runtime == "tensorrt":
        module = _module("torch_tensorrt")
        versions["torch_tensorrt"] = None if module is None else str(module.__version__)
    return versions
