"""MobileNetV2 search spaces (Sandler et al. 2018), with torchvision's module names.

Searchable: the stem, every expansion layer (``features.i.conv.0.0``), every projection
(``features.i.conv.2``; tied within a stage, whose blocks share the residual path) and the final
1x1 conv. The depthwise conv follows its expansion width. Blocks with an expansion carry gates on
the expanded channels.
"""

from __future__ import annotations

from typing import Sequence

from search_spaces.spec import BlockSpec, LayerSpec, SearchSpace, width_choices_for

# expansion t, output channels c, repeats n, first stride s (Sandler et al. 2018, Table 2)
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_v2_space(
    name: str,
    *,
    cifar: bool = False,
    setting: Sequence[tuple[int, int, int, int]] = INVERTED_RESIDUAL_SETTING,
    stem_width: int = 32,
    last_width: int = 1280,
    gated: bool = True,
    default_resolution: int = 224,
) -> SearchSpace:
    """CIFAR variant: stride-1 stem and a stride-1 second stage, so 32 px ends at 4x4."""
    layers: dict[str, int] = {"features.0.0": stem_width}
    blocks: list[BlockSpec] = []
    ties: list[tuple[str, ...]] = []
    in_layer, in_channels = "features.0.0", stem_width
    index = 1
    for stage, (expansion, out_channels, repeats, first_stride) in enumerate(setting):
        if cifar and stage == 1:
            first_stride = 1
        group: list[str] = []
        for repeat in range(repeats):
            prefix = f"features.{index}"
            stride = first_stride if repeat == 0 else 1
            if expansion == 1:
                inner: tuple[str, ...] = ()
                out_layer = f"{prefix}.conv.1"
            else:
                inner = (f"{prefix}.conv.0.0",)
                layers[inner[0]] = in_channels * expansion
                out_layer = f"{prefix}.conv.2"
            layers[out_layer] = out_channels
            group.append(out_layer)
            blocks.append(
                BlockSpec(
                    name=prefix,
                    kind="inverted_residual",
                    stride=stride,
                    in_layer=in_layer,
                    inner_layers=inner,
                    out_layer=out_layer,
                    shortcut_layer=None,
                    gated=gated and expansion != 1,
                    gate_hidden_channels=max(8, in_channels // 4),
                    has_residual=stride == 1 and in_channels == out_channels,
                )
            )
            in_layer, in_channels = out_layer, out_channels
            index += 1
        if len(group) > 1:
            ties.append(tuple(group))
    head_layer = f"features.{index}.0"
    layers[head_layer] = last_width
    return SearchSpace(
        name=name,
        family="mobilenet_v2",
        stem_layer="features.0.0",
        stem_kernel=3,
        stem_stride=1 if cifar else 2,
        stem_max_pool=False,
        blocks=tuple(blocks),
        head_layer=head_layer,
        layers=tuple(LayerSpec(n, c, width_choices_for(c)) for n, c in layers.items()),
        ties=tuple(ties),
        default_resolution=default_resolution,
    )
