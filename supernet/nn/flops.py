"""FLOP and parameter counts with fvcore.

Convention (fvcore's, the field's "FLOPs"): one fused multiply-add counts as ONE flop; inference
BatchNorm with affine parameters counts 2 per element; adaptive average pooling 1 per input
element; element-wise ops (ReLU, additions, gate masks) are not counted. ResNet-50 at 224 px:
4.11 GFLOPs.

FLOPs count the network as defined, BatchNorms unfolded. A gated network run gathered (batch 1) folds
the BatchNorms on its gated channels into the convolutions before them, so fvcore's count of such a
run is its effective FLOPs minus those BatchNorms' 2 flops per element (:func:`folded_norm_flops`).
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore scripts a helper at import time, which torch 2.9+ flags as deprecated; harmless here.
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

FLOP_CONVENTION = "fvcore FLOPs: one multiply-add = one flop"


def attention_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``, which fvcore does not count by itself.

    q (..., L, D), k (..., S, D), v (..., S, Dv): the two matmuls, ``q @ k^T`` (L * S * D per
    batch-head) and ``softmax(.) @ v`` (L * S * Dv), as fvcore counts the same two ``aten::matmul``
    calls of an unfused attention; the scaling and the softmax are free, like every element-wise op.
    """
    q, k, v = (value.type().sizes() for value in inputs[:3])
    return math.prod(q) * k[-2] + math.prod(q[:-1]) * k[-2] * v[-1]


def count_flops(model: nn.Module, resolution: int | None = None, *, inputs: torch.Tensor | None = None) -> int:
    """fvcore FLOPs of one forward pass of ``model`` in eval mode (per image of a batch of 1 by default).

    Pass ``inputs`` to count a specific input (a gathered gated network's cost depends on it).
    """
    if inputs is None:
        if resolution is None:
            raise ValueError("count_flops: give a resolution or inputs")
        device = next(model.parameters()).device
        inputs = torch.zeros(1, 3, resolution, resolution, device=device)
    was_training = model.training
    model.eval()
    try:
        # fvcore logs every op it does not count (relu, add, mul); those are free by convention.
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle("aten::scaled_dot_product_attention", attention_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        with torch.no_grad():
            total = int(analysis.total())
    finally:
        model.train(was_training)
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def _masked_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode with gates masked (batched) for the duration; restores both."""
    was_training, mode = model.training, model.gate_mode  # type: ignore[attr-defined]
    model.eval()
    model.set_gate_mode("masked")  # type: ignore[operator]
    try:
        yield
    finally:
        model.set_gate_mode(mode)  # type: ignore[operator]
        model.train(was_training)


def static_flops(model: nn.Module, resolution: int) -> int:
    """fvcore FLOPs of ``model`` with every gated channel kept (gates, if active, are counted)."""
    with _masked_eval(model):
        return count_flops(model, resolution)


@torch.no_grad()
def effective_flops(model: nn.Module, batches: Iterable[torch.Tensor], *, resolution: int) -> float:
    """Mean per-input FLOPs of a gated network over ``batches`` (masked mode, eval).

    Static FLOPs of the network with every gated channel kept (fvcore) minus the FLOPs the gates
    skipped for each input. Equals fvcore's count of the gathered batch-1 run plus the FLOPs of the
    BatchNorms that run folds away (:func:`folded_norm_flops`), input by input.
    """
    static = static_flops(model, resolution)
    total, count = 0.0, 0
    with _masked_eval(model):
        for images in batches:
            model(images)
            saved = model.gate_flops_saved()  # type: ignore[operator]
            total += static * images.shape[0] - (0.0 if saved is None else float(saved.sum()))
            count += images.shape[0]
    if count == 0:
        raise ValueError("effective_flops: no inputs")
    return total / count


def per_input_effective_flops(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B,) effective FLOPs of each input of ``images`` (masked mode, eval)."""
    static = static_flops(model, images.shape[-1])
    with _masked_eval(model), torch.no_grad():
        model(images)
        saved = model.gate_flops_saved()  # type: ignore[operator]
    flops = torch.full((images.shape[0],), float(static), dtype=torch.float64)
    return flops if saved is None else flops - saved.double()


def folded_norm_flops(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B,) FLOPs of the BatchNorms a gathered run of each input of ``images`` folds into convolutions.

    2 flops per element of each BatchNorm on a gated block's kept channels (masked mode, eval); fvcore's
    count of the gathered batch-1 run of input i is ``per_input_effective_flops(...)[i]`` minus this.
    """
    with _masked_eval(model), torch.no_grad():
        model(images)
        folded = [f for f in (block.folded_norm_flops() for block in model.gated_blocks()) if f is not None]  # type: ignore[operator]
    if not folded:
        return torch.zeros(images.shape[0], dtype=torch.float64)
    return torch.stack(folded).sum(dim=0).double()
