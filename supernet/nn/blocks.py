"""Residual blocks of the supernet, with optional dynamic channel gates on their inner channels.

Module names follow torchvision (``conv1``, ``bn1``, ``downsample``; MobileNetV2's ``conv``
sequence), so torchvision weights load. A gated block runs in one of two modes:

* masked (any batch, training and calibration): the inner activation is multiplied by the 0/1 mask;
  the block records the mask and the FLOPs one inner channel costs, from which the network
  derives each input's effective FLOPs;
* gathered (batch 1, eval): the kept channels' weights are picked with ``index_select`` and a
  smaller convolution runs, so compute really falls (DS-Net's dense-with-masks gave no speedup). The
  BatchNorms on the gated channels (``folded_norms``: ResNet's bn1, MobileNetV2's expansion and
  depthwise BNs) are folded into the convolution before them, so a kept channel costs one weight row
  and one bias entry to gather instead of a row and four BN vectors, and no BN pass runs.

The folded weights are cached per block: built when ``set_gate_mode("gathered")`` is called (so the
first input does not pay for folding), dropped by ``set_gate_mode("masked")`` and ``train()``, and
refolded when a source tensor changed (each is fingerprinted by its storage and in-place version
counter, so ``load_state_dict``, optimiser steps, ``.to()`` and in-place edits are seen; edits through
``tensor.data`` bypass the version counter and are not). With gradients enabled the fold is computed
on the fly, so the gathered path stays differentiable.

FLOPs follow fvcore's convention (one multiply-add = one flop; inference BatchNorm with affine
parameters = 2 flops per element) and count the network as defined, BatchNorms unfolded: effective
FLOPs equal fvcore's count of a gathered run plus 2 flops per element of the folded BatchNorms
(``folded_norm_flops``), which the folded run no longer executes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from supernet.nn.gates import ChannelGate
from supernet.nn.ops import (
    BranchBatchNorm2d,
    DynamicBatchNorm2d,
    DynamicConv2d,
    fold_batch_norm,
    gated_pass_norm,
    gathered_conv2d,
)

BN_FLOPS_PER_ELEMENT = 2  # fvcore, inference BatchNorm with affine parameters


class ConvBNAct(nn.Sequential):
    """conv -> BN -> activation, indexed 0/1/2 like torchvision's ``Conv2dNormActivation``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] = nn.ReLU6,
    ) -> None:
        super().__init__(
            DynamicConv2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, groups=groups
            ),
            DynamicBatchNorm2d(out_channels),
            activation(inplace=True),
        )


class _FoldedConv(NamedTuple):
    """A convolution with the BatchNorm after it folded in, as gathered mode caches it."""

    weight: torch.Tensor  # (C_out, C_in / groups, kh, kw), every channel of the module
    bias: torch.Tensor  # (C_out,)
    sources: tuple[tuple[int, int], ...]  # fingerprint of the tensors it was folded from


def _fingerprint(tensors: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int], ...]:
    """(storage address, in-place version) of each tensor: either changes when the tensor does."""
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors)


class GatedBlock(nn.Module):
    """Gate bookkeeping shared by all blocks.

    ``gate_threshold`` is None when gates are off. After a masked forward, ``last_mask`` (B, C')
    holds the mask (with its straight-through gradient), ``inner_channel_flops`` the FLOPs removed
    per dropped channel per input and ``folded_norm_channel_flops`` the FLOPs of the folded
    BatchNorms per kept channel per input (which a gathered run does not execute).
    """

    gate: ChannelGate | None
    branch_norm_names: tuple[str, ...] = ()  # the BatchNorms the gate's mask reaches (inside the residual branch)
    folded_norms: tuple[tuple[str, str], ...] = ()  # (conv, its BatchNorm) on the gated channels: folded when gathered

    def __init__(self) -> None:
        super().__init__()
        self.gate_threshold: float | None = None
        self.gather = False
        self.last_mask: torch.Tensor | None = None
        self.inner_channel_flops = 0
        self.folded_norm_channel_flops = 0
        self._folded: dict[str, _FoldedConv] = {}

    def train(self, mode: bool = True) -> GatedBlock:
        if mode:  # gathered mode is eval-only; training will change the weights
            self.release_gathered()
        return super().train(mode)

    def prepare_gathered(self) -> None:
        """Fold the gated channels' BatchNorms into their convolutions now, not on the first input."""
        if self.gate_active:
            with torch.no_grad():
                for conv_name, norm_name in self.folded_norms:
                    self._folded_conv(conv_name, norm_name)

    def release_gathered(self) -> None:
        """Drop the folded weights (they are rebuilt when a gathered forward needs them)."""
        self._folded.clear()

    def _folded_conv(self, conv_name: str, norm_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of conv ``conv_name`` with its gated-pass BatchNorm folded in; full width."""
        conv = self.get_submodule(conv_name)
        norm = gated_pass_norm(self.get_submodule(norm_name))
        sources = (conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            return fold_batch_norm(conv.weight, norm)  # differentiable; not cached
        fingerprint = _fingerprint(sources)
        cached = self._folded.get(conv_name)
        if cached is None or cached.sources != fingerprint:
            # ordinary tensors even when the first gathered input runs under inference_mode
            with torch.inference_mode(False), torch.no_grad():
                weight, bias = fold_batch_norm(conv.weight, norm)
            cached = self._folded[conv_name] = _FoldedConv(weight.contiguous(), bias.contiguous(), fingerprint)
        return cached.weight, cached.bias

    @property
    def gate_active(self) -> bool:
        return self.gate is not None and self.gate_threshold is not None

    def separate_gated_norms(self) -> None:
        """Give the branch's BatchNorms a second set for gated passes (:class:`BranchBatchNorm2d`)."""
        for name in self.branch_norm_names:
            parent_name, _, child = name.rpartition(".")
            parent = self.get_submodule(parent_name) if parent_name else self
            norm = getattr(parent, child)
            if not isinstance(norm, BranchBatchNorm2d):
                setattr(parent, child, BranchBatchNorm2d.from_norm(norm))

    def _gate_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        self.last_mask = None
        for name in self.branch_norm_names:
            norm = self.get_submodule(name)
            if isinstance(norm, BranchBatchNorm2d):
                norm.use_gated = self.gate_active
        if not self.gate_active:
            return None
        return self.gate(x, self.gate_threshold)

    def _gathered(self, x: torch.Tensor) -> bool:
        return self.gather and not self.training and x.shape[0] == 1

    def _record(self, mask: torch.Tensor, inner_channel_flops: int, folded_norm_channel_flops: int) -> None:
        self.last_mask = mask
        self.inner_channel_flops = inner_channel_flops
        self.folded_norm_channel_flops = folded_norm_channel_flops

    def flops_saved(self) -> torch.Tensor | None:
        """(B,) FLOPs the last masked forward skipped per input, differentiable through the mask."""
        if self.last_mask is None:
            return None
        dropped = self.last_mask.shape[1] - self.last_mask.sum(dim=1)
        return dropped * self.inner_channel_flops

    def folded_norm_flops(self) -> torch.Tensor | None:
        """(B,) FLOPs of the BatchNorms a gathered run of each input of the last masked forward folds away."""
        if self.last_mask is None:
            return None
        return self.last_mask.detach().sum(dim=1) * self.folded_norm_channel_flops


def _projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """ResNet's 1x1 conv + BN on the shortcut of a block that changes width or resolution."""
    return nn.Sequential(DynamicConv2d(in_channels, out_channels, 1, stride=stride), DynamicBatchNorm2d(out_channels))


def _kept_index(mask: torch.Tensor) -> torch.Tensor:
    return mask[0].nonzero().flatten()


def _all_dropped(mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros standing for the output of a block part whose every channel the gate dropped.

    ``mask.sum()`` is 0 here; adding it keeps the gate in a traced graph, so tracing FLOP counters
    (fvcore) still count the gate, which really ran.
    """
    return mask.new_zeros(shape) + mask.sum()


def _spatial(x: torch.Tensor) -> int:
    return x.shape[-2] * x.shape[-1]


class _ResNetBlock(GatedBlock):
    """conv1 -> bn1 -> ReLU -> [gate mask] -> conv2, then the block's tail plus the shortcut.

    The gate prunes conv1's outputs and conv2's inputs; both ResNet blocks share this inner part and
    differ only in their tail (:meth:`_tail`).
    """

    folded_norms = (("conv1", "bn1"),)

    conv1: DynamicConv2d
    bn1: DynamicBatchNorm2d
    conv2: DynamicConv2d
    relu: nn.ReLU
    downsample: nn.Sequential | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        mask = self._gate_mask(x)
        if mask is not None and self._gathered(x):
            out = self._inner_gathered(x, mask)
        else:
            out = self.relu(self.bn1(self.conv1(x)))
            if mask is not None:
                out = out * mask[:, :, None, None]
                self._record(mask, self._inner_channel_flops(x, out), _spatial(out) * BN_FLOPS_PER_ELEMENT)
            out = self.conv2(out)
        return self.relu(self._tail(out) + identity)

    def _tail(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inner_channel_flops(self, x: torch.Tensor, inner: torch.Tensor) -> int:
        """FLOPs one inner channel costs per input: its conv1 filter and BN, and its slice of conv2."""
        k1, k2 = self.conv1.kernel_size, self.conv2.kernel_size
        after_conv2 = _conv_output_size(inner.shape[-2:], self.conv2)
        return _spatial(inner) * (x.shape[1] * k1[0] * k1[1] + BN_FLOPS_PER_ELEMENT) + (
            after_conv2[0] * after_conv2[1] * self.conv2.active_out * k2[0] * k2[1]
        )

    def _inner_gathered(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """conv1 (bn1 folded in) -> ReLU -> conv2 on the kept inner channels only."""
        conv1, conv2 = self.conv1, self.conv2
        keep = _kept_index(mask)
        if keep.numel() == 0:
            after_conv2 = _conv_output_size(_conv_output_size(x.shape[-2:], conv1), conv2)
            return _all_dropped(mask, (1, conv2.active_out, *after_conv2))
        weight1, bias1 = self._folded_conv("conv1", "bn1")
        weight1 = weight1[:, : x.shape[1]].index_select(0, keep)
        out = gathered_conv2d(x, weight1, bias1.index_select(0, keep), stride=conv1.stride, padding=conv1.padding)
        weight2 = conv2.weight[: conv2.active_out].index_select(1, keep)
        return gathered_conv2d(F.relu(out, inplace=True), weight2, None, stride=conv2.stride, padding=conv2.padding)


class BasicBlock(_ResNetBlock):
    """ResNet basic block: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus shortcut. Gate on conv1's outputs."""

    branch_norm_names = ("bn1", "bn2")

    def __init__(
        self, in_channels: int, inner_channels: int, out_channels: int, *, stride: int, downsample: bool,
        gate_hidden_channels: int | None,
    ) -> None:
        super().__init__()
        self.conv1 = DynamicConv2d(in_channels, inner_channels, 3, stride=stride, padding=1)
        self.bn1 = DynamicBatchNorm2d(inner_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = DynamicConv2d(inner_channels, out_channels, 3, padding=1)
        self.bn2 = DynamicBatchNorm2d(out_channels)
        self.downsample = _projection_shortcut(in_channels, out_channels, stride) if downsample else None
        self.gate = None if gate_hidden_channels is None else ChannelGate(in_channels, gate_hidden_channels, inner_channels)

    def _tail(self, out: torch.Tensor) -> torch.Tensor:
        return self.bn2(out)


class Bottleneck(_ResNetBlock):
    """ResNet bottleneck (v1.5: stride on the 3x3): 1x1 -> 3x3 -> 1x1 (x4). Gate on conv1's outputs."""

    branch_norm_names = ("bn1", "bn2", "bn3")

    def __init__(
        self, in_channels: int, inner_channels: tuple[int, int], out_channels: int, *, stride: int,
        downsample: bool, gate_hidden_channels: int | None,
    ) -> None:
        super().__init__()
        width1, width2 = inner_channels
        self.conv1 = DynamicConv2d(in_channels, width1, 1)
        self.bn1 = DynamicBatchNorm2d(width1)
        self.conv2 = DynamicConv2d(width1, width2, 3, stride=stride, padding=1)
        self.bn2 = DynamicBatchNorm2d(width2)
        self.conv3 = DynamicConv2d(width2, out_channels, 1)
        self.bn3 = DynamicBatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection_shortcut(in_channels, out_channels, stride) if downsample else None
        self.gate = None if gate_hidden_channels is None else ChannelGate(in_channels, gate_hidden_channels, width1)

    def _tail(self, out: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(self.relu(self.bn2(out))))


class InvertedResidual(GatedBlock):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project (linear). Gate on the expansion."""

    def __init__(
        self, in_channels: int, expanded_channels: int | None, out_channels: int, *, stride: int,
        residual: bool, gate_hidden_channels: int | None,
    ) -> None:
        super().__init__()
        self.use_res_connect = residual
        layers: list[nn.Module] = []
        hidden = in_channels if expanded_channels is None else expanded_channels
        if expanded_channels is not None:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden),
            DynamicConv2d(hidden, out_channels, 1),
            DynamicBatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.expands = expanded_channels is not None
        self.branch_norm_names = ("conv.0.1", "conv.1.1", "conv.3") if self.expands else ()
        self.folded_norms = (("conv.0.0", "conv.0.1"), ("conv.1.0", "conv.1.1")) if self.expands else ()
        self.gate = (
            ChannelGate(in_channels, gate_hidden_channels, hidden)
            if gate_hidden_channels is not None and self.expands
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self._gate_mask(x)
        if mask is not None and self._gathered(x):
            out = self._forward_gathered(x, mask)
        elif mask is None:
            out = self.conv(x)
        else:
            expand, depthwise, project, project_bn = self.conv
            out = expand(x) * mask[:, :, None, None]
            # mask again after the depthwise conv: its BN turns a zeroed channel into a constant that
            # would still reach the projection, while the gathered path drops the channel entirely
            out = depthwise(out) * mask[:, :, None, None]
            kernel = depthwise[0].kernel_size
            per_channel = _spatial(x) * (x.shape[1] + BN_FLOPS_PER_ELEMENT) + _spatial(out) * (
                kernel[0] * kernel[1] + BN_FLOPS_PER_ELEMENT + project.active_out
            )
            self._record(mask, per_channel, (_spatial(x) + _spatial(out)) * BN_FLOPS_PER_ELEMENT)
            out = project_bn(project(out))
        return x + out if self.use_res_connect else out

    def _forward_gathered(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """expand and depthwise (their BNs folded in) on the kept channels, then the projection and its BN."""
        expand, depthwise, project, project_bn = self.conv
        expand_conv, dw_conv = expand[0], depthwise[0]
        keep = _kept_index(mask)
        if keep.numel() == 0:
            return project_bn(_all_dropped(mask, (1, project.active_out, *_conv_output_size(x.shape[-2:], dw_conv))))
        weight, bias = self._folded_conv("conv.0.0", "conv.0.1")
        weight = weight[:, : x.shape[1]].index_select(0, keep)
        out = gathered_conv2d(x, weight, bias.index_select(0, keep), stride=expand_conv.stride,
                              padding=expand_conv.padding)
        weight, bias = self._folded_conv("conv.1.0", "conv.1.1")
        out = gathered_conv2d(F.relu6(out, inplace=True), weight.index_select(0, keep), bias.index_select(0, keep),
                              stride=dw_conv.stride, padding=dw_conv.padding, groups=keep.numel())
        weight = project.weight[: project.active_out].index_select(1, keep)
        out = gathered_conv2d(F.relu6(out, inplace=True), weight, None, stride=project.stride, padding=project.padding)
        return project_bn(out)


def _conv_output_size(size: tuple[int, ...], conv: nn.Conv2d) -> tuple[int, int]:
    """(H, W) of ``conv``'s output for an input of spatial ``size`` (H, W)."""
    height, width = ((side + 2 * padding - kernel) // stride + 1
                     for side, kernel, stride, padding in zip(size, conv.kernel_size, conv.stride, conv.padding))
    return height, width
