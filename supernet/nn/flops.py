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

import copy
import logging
import math
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

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


def matmul_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for ``aten::matmul`` that also takes a vector operand, which fvcore's own rejects.

    (..., n, k) @ (..., k, m): prod(a) * m multiply-adds, as fvcore counts; (..., k) @ (k,) (a router's spatial
    mean, :class:`supernet.nn.routing.RouterHead`): prod(a); (k,) @ (..., k, m): prod(b).
    """
    a, b = (value.type().sizes() for value in inputs[:2])
    if len(b) == 1:
        return math.prod(a)
    if len(a) == 1:
        return math.prod(b)
    return math.prod(a) * b[-1]


def matrix_vector_flop_jit(inputs: list, outputs: list) -> int:
    """fvcore handle for ``aten::mv`` (matrix, vector) and ``aten::addmv`` (bias, matrix, vector): one multiply-add
    per matrix element; the bias is free, as fvcore's ``addmm`` counts it."""
    matrix = inputs[0 if len(inputs) == 2 else 1].type().sizes()
    return math.prod(matrix)


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
        analysis.set_op_handle("aten::matmul", matmul_flop_jit)
        analysis.set_op_handle("aten::mv", matrix_vector_flop_jit)
        analysis.set_op_handle("aten::addmv", matrix_vector_flop_jit)
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


# -- the same counts from shapes alone --------------------------------------------------------------
def _numel(tensor: Any) -> int:
    return math.prod(tensor.shape)


def _convolution(args: tuple, out: torch.Tensor) -> int:  # input, weight, ...: MACs = out * C_in/groups * kh * kw
    return _numel(out) * math.prod(args[1].shape[1:])


def _batch_norm(args: tuple, out: Any) -> int:  # input, weight, ...: inference BN, 2 per element with affine
    return _numel(args[0]) * (2 if args[1] is not None else 1)


def _layer_norm(args: tuple, out: Any) -> int:  # input, shape, weight, ...: 5 per element with affine (fvcore)
    return _numel(args[0]) * (5 if len(args) > 2 and args[2] is not None else 4)


def _spatial_mean(args: tuple, out: Any) -> int:  # adaptive average pooling to 1x1 lowers to mean over (H, W)
    dims = sorted(d % args[0].dim() for d in args[1])
    return _numel(args[0]) if dims == [args[0].dim() - 2, args[0].dim() - 1] else 0


def _attention(args: tuple, out: Any) -> int:  # q (..., L, D), k (..., S, D), v (..., S, Dv): as attention_flop_jit
    q, k, v = (tuple(t.shape) for t in args[:3])
    return math.prod(q) * k[-2] + math.prod(q[:-1]) * k[-2] * v[-1]


_aten = torch.ops.aten
_FVCORE_RULES: dict[Any, Callable[[tuple, Any], int]] = {
    _aten.convolution: _convolution,
    _aten.mm: lambda args, out: args[0].shape[0] * args[0].shape[1] * args[1].shape[1],
    _aten.addmm: lambda args, out: args[1].shape[0] * args[1].shape[1] * args[2].shape[1],
    _aten.bmm: lambda args, out: args[0].shape[0] * args[0].shape[1] * args[0].shape[2] * args[1].shape[2],
    _aten.native_batch_norm: _batch_norm,
    _aten._native_batch_norm_legit_no_training: _batch_norm,
    _aten.native_layer_norm: _layer_norm,
    _aten.mean: _spatial_mean,
    _aten._scaled_dot_product_flash_attention_for_cpu: _attention,
    _aten._scaled_dot_product_flash_attention: _attention,
    _aten._scaled_dot_product_efficient_attention: _attention,
    _aten._scaled_dot_product_cudnn_attention: _attention,
}


class _ShapeFlops(TorchDispatchMode):
    """Sums fvcore's FLOPs of the aten ops a forward dispatches, read off their shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        rule = _FVCORE_RULES.get(func.overloadpacket)
        if rule is not None:
            self.total += rule(args, out)
        return out


class ShapeFlopCounter:
    """fvcore's FLOPs of a supernet's configs (as :func:`static_flops` counts them), from the shapes of a
    batch-1 forward of a private CPU copy, each block's count cached by its widths.

    fvcore traces the network with TorchScript, about a second a config for ``resnet18_cifar`` on a
    CPU core: a host stall no training step can afford, and the gated pass meets a new per-layer config
    nearly every step. This counts, op by op, what fvcore would count (convolutions and matrix
    products one flop per multiply-add, inference BatchNorm 2 per element, LayerNorm 5, adaptive
    average pooling 1 per input element, attention as :func:`attention_flop_jit`) while the copy runs
    the config in masked mode. A block's FLOPs depend only on its input's shape and its own widths,
    so each block's count and output shape are cached under those and a block seen before is not
    run again: once the caches are warm a count runs the stem and the head alone (~1 ms). The test
    suite holds the counts equal to fvcore's over random configs of every network family.

    Example::

        counter = ShapeFlopCounter(supernet, resolution=32)
        counter(cfg) == static_flops(supernet.extract(cfg), 32)
    """

    def __init__(self, network: nn.Module, resolution: int) -> None:
        self.network = copy.deepcopy(network).to("cpu").eval()
        self.network.set_gate_mode("masked")  # type: ignore[operator]
        self.resolution = resolution
        self._counter: _ShapeFlops | None = None
        modules = dict(self.network.named_modules())
        for spec in self.network.space.blocks:  # type: ignore[attr-defined]
            self._cache_block(modules[spec.name])

    def _cache_block(self, block: nn.Module) -> None:
        run, known, members = block.forward, {}, list(block.modules())  # the private copy's blocks only

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            counter = self._counter
            assert counter is not None
            widths = tuple((getattr(m, "active_out", None), getattr(m, "gate_threshold", None) is not None)
                           for m in members)
            key = (tuple(x.shape), widths, args, tuple(sorted(kwargs.items())))
            if key not in known:
                before = counter.total
                out = run(x, *args, **kwargs)
                known[key] = (counter.total - before, tuple(out.shape))
                return out
            flops, shape = known[key]
            counter.total += flops
            return x.new_zeros(shape)

        block.forward = forward  # type: ignore[method-assign]

    @torch.no_grad()
    def __call__(self, cfg: Any) -> int:
        """FLOPs of ``cfg`` (a ``SubnetConfig``) with every gated channel kept, gates counted if on."""
        self.network.set_active(cfg)  # type: ignore[operator]
        with _ShapeFlops() as counter:
            self._counter = counter
            try:
                self.network(torch.zeros(1, 3, self.resolution, self.resolution))
            finally:
                self._counter = None
        return counter.total
