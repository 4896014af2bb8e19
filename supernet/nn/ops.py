"""Slicing ops: convolution, BatchNorm and linear layers that compute only their active channels.

Following US-Nets (Yu & Huang 2019), a sub-network of width ``c`` uses the first ``c`` filters of a
layer: ``weight[:out, :in]``. The input width is read off the input tensor, so only the output
width is state (``active_out``, set by the supernet). Nothing is computed at full width and masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DynamicConv2d(nn.Conv2d):
    """``nn.Conv2d`` computing ``active_out`` output channels from however many input channels arrive.

    A depthwise conv (``groups == in_channels == out_channels``) follows its input width.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=bias)
        if groups not in (1, in_channels) or (groups > 1 and in_channels != out_channels):
            raise ValueError("DynamicConv2d supports dense (groups=1) and depthwise convs only")
        self.depthwise = groups > 1
        self.active_out = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in', H, W) -> (B, C_out', H', W')
        in_channels = x.shape[1]
        if self.depthwise:
            weight, groups, out_channels = self.weight[:in_channels], in_channels, in_channels
        else:
            weight, groups, out_channels = self.weight[: self.active_out, :in_channels], 1, self.active_out
        bias = None if self.bias is None else self.bias[:out_channels]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


def _dynamic_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over the first ``x.shape[1]`` channels of ``bn``'s parameters and statistics."""
    channels = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        # momentum=None: cumulative moving average, as nn.BatchNorm does
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    running_mean = None if bn.running_mean is None else bn.running_mean[:channels]
    running_var = None if bn.running_var is None else bn.running_var[:channels]
    weight = None if bn.weight is None else bn.weight[:channels]
    bias = None if bn.bias is None else bn.bias[:channels]
    if bn.training and getattr(bn, "sync_across_ranks", False):
        return _synced_batch_norm(x, running_mean, running_var, weight, bias, factor, bn.eps)
    splits = getattr(bn, "batch_splits", 1)
    if bn.training and splits > 1:
        return _split_batch_norm(x, running_mean, running_var, weight, bias, factor, bn.eps, splits)
    use_batch_stats = bn.training or running_mean is None
    return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, factor, bn.eps)


def _synced_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    factor: float,
    eps: float,
) -> torch.Tensor:
    """Training BatchNorm whose batch statistics span every data-parallel rank (SyncBN, as BYOL uses).

    Per-channel sums and sums of squares are all-reduced with autograd-aware collectives, so the
    result and its gradients equal one process normalising the whole global batch.
    """
    from torch.distributed.nn.functional import all_reduce

    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    values = x.float()
    # float64 sums: E[x^2] - E[x]^2 in float32 loses about 20x float rounding to cancellation, which the
    # sandwich's updates amplify
    count = values.new_full((1,), values.numel() // channels, dtype=torch.float64)
    totals = all_reduce(torch.cat([values.sum(dims, dtype=torch.float64), (values * values).sum(dims, dtype=torch.float64),
                                   count]))
    total_count = totals[-1]
    mean64 = totals[:channels] / total_count
    var64 = (totals[channels : 2 * channels] / total_count - mean64 * mean64).clamp_min(0.0)
    mean, var = mean64.float(), var64.float()
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            unbiased = (var64.detach() * total_count / (total_count - 1).clamp_min(1.0)).float()
            running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
    shape = (1, channels) + (1,) * (x.dim() - 2)
    out = (values - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape) + bias.view(shape)
    return out.to(x.dtype)


def _split_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    factor: float,
    eps: float,
    splits: int,
) -> torch.Tensor:
    """Training BatchNorm with separate batch statistics for ``splits`` groups of the batch.

    Group ``s`` holds samples ``s, s + splits, s + 2 * splits, ...``: the interleaved layout in which
    one process's batch shards over data-parallel ranks (:class:`supernet.data.sampling.EpochSampler`),
    so ``splits`` groups on one device normalise exactly as ``splits`` ranks with per-rank BN. This is
    the single-device form of MoCo's Shuffle-BN (He et al. 2020, section 3.3; the split BatchNorm of
    facebookresearch/moco's CIFAR demo, whose arithmetic this follows): viewed as (B / S, S * C, ...),
    a contiguous batch puts group ``s``'s channel ``c`` at channel ``s * C + c``, so one ordinary
    BatchNorm over the view, with the parameters and running statistics repeated ``S`` times,
    normalises every group apart; the running statistics then take the mean over groups.
    """
    batch, channels = x.shape[0], x.shape[1]
    if batch % splits:
        raise ValueError(f"split BatchNorm: a batch of {batch} does not split into {splits} equal groups; "
                         "use a batch size that is a multiple of ssl.bn_splits")
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    grouped = x.contiguous().view(batch // splits, splits * channels, *x.shape[2:])

    def repeated(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.repeat(splits)

    split_mean, split_var = repeated(running_mean), repeated(running_var)
    out = F.batch_norm(grouped, split_mean, split_var, repeated(weight), repeated(bias), True, factor, eps).view(x.shape)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.copy_(split_mean.view(splits, channels).mean(0))  # type: ignore[union-attr]
            running_var.copy_(split_var.view(splits, channels).mean(0))  # type: ignore[union-attr]
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` over the first ``C'`` channels of its parameters and running statistics.

    Running statistics are shared by all widths (US-Nets recalibrates them per sub-network after
    training, see :func:`supernet.bn.recalibrate_bn`); updates write into the active prefix only.
    ``sync_across_ranks = True`` (set by data-parallel training) takes batch statistics over all ranks;
    ``batch_splits = S`` (Shuffle-BN on one device) takes them over S interleaved groups of the batch.
    """

    sync_across_ranks = False
    batch_splits = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dynamic_batch_norm(self, x)


class BranchBatchNorm2d(DynamicBatchNorm2d):
    """A :class:`DynamicBatchNorm2d` with a second set of parameters and statistics, ``gated``, for
    the gated branch of a block (Krishna et al.'s ``--separate_bn``): dense and gated activations
    have different statistics, so each normalises with its own. ``use_gated`` (set by the block on
    every forward) picks the set; the dense set keeps torchvision's names.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.gated = DynamicBatchNorm2d(num_features)
        self.use_gated = False

    @classmethod
    def from_norm(cls, norm: DynamicBatchNorm2d) -> BranchBatchNorm2d:
        """Both branches start as copies of ``norm`` (parameters and statistics)."""
        branch = cls(norm.num_features).to(norm.weight.device)
        branch.load_state_dict(norm.state_dict(), strict=False)
        branch.gated.load_state_dict(norm.state_dict())
        return branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dynamic_batch_norm(self.gated if self.use_gated else self, x)


def gated_pass_norm(norm: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """The parameter set ``norm`` applies in a gated pass (the gated twin of a :class:`BranchBatchNorm2d`)."""
    return norm.gated if isinstance(norm, BranchBatchNorm2d) else norm


class DynamicBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` counterpart of :class:`DynamicBatchNorm2d` (projection heads)."""

    sync_across_ranks = False
    batch_splits = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dynamic_batch_norm(self, x)


class DynamicLinear(nn.Linear):
    """``nn.Linear`` reading the first ``C'`` input features; ``active_out`` output features."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.active_out = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in') -> (B, C_out')
        weight = self.weight[: self.active_out, : x.shape[-1]]
        bias = None if self.bias is None else self.bias[: self.active_out]
        return F.linear(x, weight, bias)


def fold_batch_norm(weight: torch.Tensor, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm ``norm`` folded into the convolution before it: ``(weight', bias')`` with
    ``conv(x, weight', bias') == norm(conv(x, weight))`` up to float rounding (a few 1e-7 relative).

    ``weight``: (C_out, C_in / groups, kh, kw) -> weight' of the same shape and bias' (C_out,). The
    norm's running statistics and affine parameters are read (first C_out channels); no state changes.
    """
    channels = weight.shape[0]
    if norm.running_mean is None or norm.running_var is None or norm.weight is None or norm.bias is None:
        raise ValueError("fold_batch_norm: the norm needs running statistics and affine parameters")
    scale = norm.weight[:channels] * torch.rsqrt(norm.running_var[:channels] + norm.eps)
    bias = norm.bias[:channels] - norm.running_mean[:channels] * scale
    return weight * scale.view(-1, *(1,) * (weight.dim() - 1)), bias


def _eager_cpu_float(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x`` and ``weight`` are plain CPU float32 tensors in an eager, gradient-free call.

    Anything else (tracing: fvcore's FLOP counter, ``torch.onnx``; scripting; compiling or exporting,
    whose fake tensors are Tensor subclasses; other devices and dtypes; autograd) keeps ``F.conv2d``.
    """
    compiling = getattr(torch.compiler, "is_compiling", None)
    return (
        type(x) is torch.Tensor
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not (compiling is not None and compiling())
    )


def gathered_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d`` for a convolution narrowed to a gate's kept channels (gathered batch-1 inference).

    ATen sends a batch-1 convolution whose input has at most 20,480 elements to its im2col kernel instead
    of oneDNN (``ConvParams::use_mkldnn``), so narrowing ResNet-18's layer-4 conv2 (7x7 maps) to about
    half its inputs moved it onto a kernel ~1.7x slower per FLOP than the full-width convolution's. On
    CPU float32, kernels wider than 1x1 therefore call oneDNN directly (same arithmetic as ``F.conv2d``'s
    oneDNN path); 1x1 kernels keep ATen's choice, which at one thread is sometimes the faster one. Traced,
    scripted, compiled and exported runs use ``F.conv2d``, which FLOP counters and exporters know.
    """
    if _eager_cpu_float(x, weight) and (weight.shape[-2] > 1 or weight.shape[-1] > 1):
        return torch.mkldnn_convolution(x, weight, bias, padding, stride, (1, 1), groups)
    return F.conv2d(x, weight, bias, stride, padding, 1, groups)
