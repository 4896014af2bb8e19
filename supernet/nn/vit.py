"""Slimmable Vision Transformer supernet (ViT, Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021).

timm's layout and module names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``), so at
maximum width a timm ``vit_tiny_patch16_224`` state_dict loads. Slicing, never masking (US3L's
slimmable ViT; US-Nets): a sub-network computes only its active widths.

* Embedding width ``E'`` (one tied decision): the first ``E'`` patch-embedding filters, class-token and
  position-embedding channels, LayerNorm parameters, attention-projection and fc2 rows.
* Attention width ``h * head_dim`` per block: the first ``h`` heads. ``qkv``'s rows are laid out
  ``[q heads | k heads | v heads]`` (timm), so a sub-network takes the first ``h * head_dim`` rows of
  each third; the projection reads the first ``h * head_dim`` inputs. Attention runs on the active
  heads with :func:`torch.nn.functional.scaled_dot_product_attention` (scale ``head_dim ** -0.5``).
* MLP hidden width per block: fc1's first rows, fc2's first columns.
* LayerNorm over the active width only: mean and variance of the first ``E'`` features, then the
  first ``E'`` affine parameters (US-Nets' slimmable normalisation, statistics per width). A
  sub-network's LayerNorm therefore equals a plain ``nn.LayerNorm(E')`` holding the sliced
  parameters, which is what makes an extracted network exact.

Gates (Krishna et al. 2023, adapted): a :class:`~supernet.nn.gates.ChannelGate` per block on the MLP
hidden channels, fed with the mean token of the MLP input (adaptive average pooling over the tokens).
Masked mode multiplies the hidden activation (after GELU) by the 0/1 mask; gathered mode (batch 1)
runs fc1 and fc2 on the kept channels only. A dropped hidden channel saves its fc1 row and its fc2
column for every token: ``N * (E_in' + E_out')`` flops per input (fvcore's convention, biases and
GELU free). There is no BatchNorm outside the gates, so BatchNorm recalibration only re-estimates
the gates' statistics (and changes nothing in an ungated ViT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import SearchSpace, SubnetConfig
from supernet.nn.blocks import GatedBlock
from supernet.nn.gates import ChannelGate, GateOptions
from supernet.nn.models import SuperNet
from supernet.nn.ops import DynamicConv2d, DynamicLinear

LAYER_NORM_EPS = 1e-6  # timm / DeiT


class DynamicLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last ``C'`` features it is given: statistics over the active width,
    the first ``C'`` affine parameters. (..., C') -> (..., C')."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        return F.layer_norm(x, (width,), self.weight[:width], self.bias[:width], self.eps)


class HeadSlicedQKV(nn.Linear):
    """The fused query/key/value projection, sliced by whole heads.

    ``weight``: (3 * H * D, E) with rows ``[q | k | v]``, each head-major (timm). ``active_out`` is
    the attention width ``h * D`` (the searchable layer's width); the output is (..., 3 * h * D):
    the first ``h * D`` rows of each third, from the first ``E'`` input features.
    """

    def __init__(self, in_features: int, attention_width: int) -> None:
        super().__init__(in_features, 3 * attention_width, bias=True)
        self.attention_width = attention_width
        self.active_out = attention_width

    def sliced(self, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (3 h D, E'), bias (3 h D,)) of the active heads."""
        width = self.active_out
        weight = self.weight.view(3, self.attention_width, -1)[:, :width, :in_features].reshape(3 * width, in_features)
        return weight, self.bias.view(3, self.attention_width)[:, :width].reshape(3 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, E') -> (B, N, 3 h D)
        weight, bias = self.sliced(x.shape[-1])
        return F.linear(x, weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention on the active heads: (B, N, E') -> (B, N, E_out')."""

    def __init__(self, embed_dim: int, attention_width: int, out_dim: int, *, head_dim: int) -> None:
        super().__init__()
        if attention_width % head_dim:
            raise ValueError(f"attention width {attention_width} is not a whole number of {head_dim}-wide heads")
        self.head_dim = head_dim
        self.qkv = HeadSlicedQKV(embed_dim, attention_width)
        self.proj = DynamicLinear(attention_width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        heads = self.qkv.active_out // self.head_dim
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, D)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, heads * self.head_dim))


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's ``Mlp``): (B, N, E') -> (B, N, E_out')."""

    def __init__(self, embed_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = DynamicLinear(embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = DynamicLinear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches to tokens: (B, 3, H, W) -> (B, H/p * W/p, E')."""

    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = DynamicConv2d(3, embed_dim, patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"input {tuple(x.shape[-2:])} px is not a multiple of the {self.patch_size}-px patch")
        return self.proj(x).flatten(2).transpose(1, 2)


class TransformerBlock(GatedBlock):
    """Pre-norm ViT block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; gate on the MLP hidden channels."""

    def __init__(self, embed_dim: int, attention_width: int, mlp_hidden: int, out_dim: int, *, head_dim: int,
                 gate_hidden_channels: int | None) -> None:
        super().__init__()
        self.norm1 = DynamicLayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(embed_dim, attention_width, out_dim, head_dim=head_dim)
        self.norm2 = DynamicLayerNorm(out_dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(out_dim, mlp_hidden, out_dim)
        self.gate = None if gate_hidden_channels is None else ChannelGate(out_dim, gate_hidden_channels, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, E') -> (B, N, E')
        x = x + self.attn(self.norm1(x))
        h = self.norm2(x)
        # the gate pools the tokens as a (B, E', N, 1) map: its input is the mean token
        mask = self._gate_mask(h.transpose(1, 2).unsqueeze(-1))
        if mask is None:
            return x + self.mlp(h)
        if self._gathered(h):
            return x + self._mlp_gathered(h, mask)
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        hidden = self.mlp.act(fc1(h)) * mask[:, None, :]
        self._record(mask, h.shape[1] * (h.shape[-1] + fc2.active_out), 0)
        return x + fc2(hidden)

    def _mlp_gathered(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """fc1 -> GELU -> fc2 on the kept hidden channels only (batch 1)."""
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        keep = mask[0].nonzero().flatten()
        bias2 = fc2.bias[: fc2.active_out]
        if keep.numel() == 0:
            # fc2 of nothing is its bias; adding mask.sum() (0) keeps the gate in a traced graph
            return bias2.expand(1, h.shape[1], -1) + mask.sum()
        weight1 = fc1.weight[:, : h.shape[-1]].index_select(0, keep)
        hidden = self.mlp.act(F.linear(h, weight1, fc1.bias.index_select(0, keep)))
        return F.linear(hidden, fc2.weight[: fc2.active_out].index_select(1, keep), bias2)


class ViTSuperNet(SuperNet):
    """Slimmable ViT from a ``family="vit"`` space; ``forward_features`` is the class token after the
    final norm, (B, E'). Inputs may be any multiple of the patch size; the position embeddings of the
    space's ``default_resolution`` are interpolated (bicubic, DINO's way) for other grids.

    >>> from supernet.nn.models import build_supernet
    >>> net = build_supernet("vit_test")
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 32])
    """

    def __init__(self, space: SearchSpace, *, num_classes: int = 0, with_gates: bool = True,
                 gate_options: GateOptions | None = None) -> None:
        super().__init__(space, num_classes=num_classes, with_gates=with_gates, gate_options=gate_options)
        if space.family != "vit" or space.head_dim is None:
            raise ValueError(f"ViTSuperNet: space {space.name!r} is not a ViT space (family 'vit' with a head_dim)")
        width = {layer.name: layer.max_channels for layer in space.layers}
        embed_dim = width[space.stem_layer]
        self.patch_size = space.stem_stride
        self.grid_size = space.default_resolution // self.patch_size
        self.patch_embed = PatchEmbed(embed_dim, self.patch_size)
        self._bind(space.stem_layer, self.patch_embed.proj)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, embed_dim))
        blocks: list[TransformerBlock] = []
        for spec in space.blocks:
            fc1, qkv = spec.inner_layers
            proj = f"{spec.name}.attn.proj"
            block = TransformerBlock(
                width[spec.in_layer], width[qkv], width[fc1], width[spec.out_layer], head_dim=space.head_dim,
                gate_hidden_channels=self._gate_hidden(spec.name),
            )
            if width[proj] != width[spec.out_layer]:
                raise ValueError(f"{proj} and {spec.out_layer} write the residual stream and must be tied")
            for layer_name, module in ((qkv, block.attn.qkv), (proj, block.attn.proj), (fc1, block.mlp.fc1),
                                       (spec.out_layer, block.mlp.fc2)):
                self._bind(layer_name, module)  # type: ignore[arg-type]  # anything with an ``active_out``
            blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.norm = DynamicLayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head = DynamicLinear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT initialisation: truncated-normal (std 0.02) linear weights and position
        embeddings, zero biases, class token ~ N(0, 1e-6); gates as the CNN supernets' gates."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for gate in self.modules():
            if isinstance(gate, ChannelGate):
                gate.init_bias = self.gate_options.init_bias
                gate.reset_parameters()
        # GateOptions.separate_norms has nothing to act on: a ViT block has no BatchNorm in its branch

    def position_embedding(self, grid: tuple[int, int], width: int) -> torch.Tensor:
        """(1, 1 + gh * gw, E') position embeddings for a ``grid`` of patches (interpolated if needed)."""
        pos = self.pos_embed[:, :, :width]
        if grid == (self.grid_size, self.grid_size):
            return pos
        patches = pos[:, 1:].reshape(1, self.grid_size, self.grid_size, width).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], width)], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, E')
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.patch_embed(x)
        width = tokens.shape[-1]
        cls = self.cls_token[:, :, :width].expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.position_embedding(grid, width)
        tokens = self.blocks(tokens)
        # LayerNorm is per token, so normalising the class token alone equals timm's norm-then-pick
        return self.norm(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def extract(self, cfg: SubnetConfig) -> ViTSuperNet:
        """As :meth:`SuperNet.extract`; qkv's rows are then re-sliced per third (q, k, v), which a
        prefix slice of the fused weight gets wrong."""
        network = super().extract(cfg)
        assert isinstance(network, ViTSuperNet)
        with torch.no_grad():
            for source, target in zip(self.blocks, network.blocks):
                qkv = source.attn.qkv
                width = target.attn.qkv.attention_width
                in_features = target.attn.qkv.in_features
                weight = qkv.weight.view(3, qkv.attention_width, -1)[:, :width, :in_features]
                target.attn.qkv.weight.copy_(weight.reshape(3 * width, in_features))
                target.attn.qkv.bias.copy_(qkv.bias.view(3, qkv.attention_width)[:, :width].reshape(3 * width))
        return network

