"""Vision Transformer search spaces (Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021), timm's module names.

Searchable, as in US3L's ViT experiments (Cao et al., CVPR 2023):

* the embedding width, ONE decision tied across the network: the patch embedding
  (``patch_embed.proj``), every block's attention projection (``blocks.i.attn.proj``) and MLP output
  (``blocks.i.mlp.fc2``) write the residual stream, so they share one width; the LayerNorms, class
  token and position embedding follow it;
* the attention width of each block, ``blocks.i.attn.qkv``: ``heads x head_dim`` with ``head_dim``
  fixed (:attr:`SearchSpace.head_dim`), so the choices are whole heads (1 ... H heads);
* the MLP hidden width of each block, ``blocks.i.mlp.fc1`` (fc1's outputs, fc2's inputs).

A block's ``inner_layers`` are ``(mlp.fc1, attn.qkv)``: the residual stream never sees either width.
fc1 comes first because a gated block gates its first inner layer: the gate drops MLP hidden channels.
"""

from __future__ import annotations

from search_spaces.spec import BlockSpec, LayerSpec, SearchSpace, width_choices_for


def vit_space(
    name: str,
    *,
    embed_dim: int,
    depth: int,
    num_heads: int,
    head_dim: int,
    mlp_ratio: float = 4.0,
    patch_size: int,
    default_resolution: int,
    gated: bool = True,
) -> SearchSpace:
    """Search space of a ViT with ``depth`` blocks of ``num_heads`` heads of ``head_dim`` each.

    ``default_resolution`` sets the number of position embeddings ((R / patch)^2 + 1 with the class
    token); other resolutions (multiples of the patch size) interpolate them.

    >>> space = vit_space("t", embed_dim=32, depth=2, num_heads=2, head_dim=16, patch_size=8, default_resolution=32)
    >>> space.layer("blocks.0.attn.qkv").width_choices
    (16, 32)
    """
    if default_resolution % patch_size:
        raise ValueError(f"default_resolution: {default_resolution} is not a multiple of patch_size={patch_size}")
    hidden = int(embed_dim * mlp_ratio)
    embed_choices = width_choices_for(embed_dim)
    head_choices = tuple(heads * head_dim for heads in range(1, num_heads + 1))
    layers: list[LayerSpec] = [LayerSpec("patch_embed.proj", embed_dim, embed_choices)]
    blocks: list[BlockSpec] = []
    residual: list[str] = ["patch_embed.proj"]
    in_layer = "patch_embed.proj"
    for index in range(depth):
        prefix = f"blocks.{index}"
        qkv, proj, fc1, fc2 = (f"{prefix}.attn.qkv", f"{prefix}.attn.proj", f"{prefix}.mlp.fc1", f"{prefix}.mlp.fc2")
        layers += [
            LayerSpec(qkv, num_heads * head_dim, head_choices),
            LayerSpec(proj, embed_dim, embed_choices),
            LayerSpec(fc1, hidden, width_choices_for(hidden)),
            LayerSpec(fc2, embed_dim, embed_choices),
        ]
        residual += [proj, fc2]
        blocks.append(
            BlockSpec(
                name=prefix,
                kind="transformer",
                stride=1,
                in_layer=in_layer,
                inner_layers=(fc1, qkv),
                out_layer=fc2,
                shortcut_layer=None,
                gated=gated,
                gate_hidden_channels=max(8, embed_dim // 4),
                has_residual=True,
            )
        )
        in_layer = fc2
    return SearchSpace(
        name=name,
        family="vit",
        stem_layer="patch_embed.proj",
        stem_kernel=patch_size,
        stem_stride=patch_size,
        stem_max_pool=False,
        blocks=tuple(blocks),
        head_layer=None,
        layers=tuple(layers),
        ties=(tuple(residual),),
        default_resolution=default_resolution,
        head_dim=head_dim,
    )


def vit_tiny_space(
    name: str, *, patch_size: int = 16, default_resolution: int = 224, gated: bool = True
) -> SearchSpace:
    """ViT-Tiny / DeiT-Ti: embedding 192, 12 blocks, 3 heads of 64, MLP ratio 4 (timm ``vit_tiny_patch16_224``)."""
    return vit_space(name, embed_dim=192, depth=12, num_heads=3, head_dim=64, mlp_ratio=4.0, patch_size=patch_size,
                     default_resolution=default_resolution, gated=gated)
