"""ResNet search spaces (He et al. 2016; torchvision's v1.5 layout, stride on the 3x3 conv).

Layer names are torchvision module paths, so a torchvision ``state_dict`` loads into the supernet at
maximum width. The residual path of a stage (every block's last conv and the stage's downsample
conv, plus the stem for a stage entered without a downsample) is one tie group.
"""

from __future__ import annotations

from typing import Sequence

from search_spaces.spec import BlockSpec, LayerSpec, SearchSpace, width_choices_for


def resnet_space(
    name: str,
    *,
    block: str,
    depths: Sequence[int],
    stage_widths: Sequence[int] = (64, 128, 256, 512),
    stem_width: int = 64,
    cifar_stem: bool = False,
    gated: bool = True,
    default_resolution: int = 224,
) -> SearchSpace:
    """Search space of a ResNet with ``block`` in {"basic", "bottleneck"} and ``depths`` per stage."""
    expansion = 4 if block == "bottleneck" else 1
    layers: dict[str, int] = {"conv1": stem_width}
    blocks: list[BlockSpec] = []
    ties: list[tuple[str, ...]] = []
    in_layer, in_channels = "conv1", stem_width
    for stage, (depth, width) in enumerate(zip(depths, stage_widths), start=1):
        out_channels = width * expansion
        stride = 1 if stage == 1 else 2
        residual_group: list[str] = []
        if stride != 1 or in_channels != out_channels:
            shortcut = f"layer{stage}.0.downsample.0"
            layers[shortcut] = out_channels
            residual_group.append(shortcut)
        else:
            shortcut = None
            residual_group.append(in_layer)  # identity shortcut: the stem is on this residual path
        for index in range(depth):
            prefix = f"layer{stage}.{index}"
            if block == "bottleneck":
                inner = (f"{prefix}.conv1", f"{prefix}.conv2")
                out_layer = f"{prefix}.conv3"
            else:
                inner = (f"{prefix}.conv1",)
                out_layer = f"{prefix}.conv2"
            for layer in inner:
                layers[layer] = width
            layers[out_layer] = out_channels
            residual_group.append(out_layer)
            blocks.append(
                BlockSpec(
                    name=prefix,
                    kind="bottleneck" if block == "bottleneck" else "basic",
                    stride=stride if index == 0 else 1,
                    in_layer=in_layer,
                    inner_layers=inner,
                    out_layer=out_layer,
                    shortcut_layer=shortcut if index == 0 else None,
                    gated=gated,
                    gate_hidden_channels=max(8, in_channels // 4),
                    has_residual=True,
                )
            )
            in_layer, in_channels = out_layer, out_channels
        ties.append(tuple(residual_group))
    return SearchSpace(
        name=name,
        family="resnet",
        stem_layer="conv1",
        stem_kernel=3 if cifar_stem else 7,
        stem_stride=1 if cifar_stem else 2,
        stem_max_pool=not cifar_stem,
        blocks=tuple(blocks),
        head_layer=None,
        layers=tuple(LayerSpec(n, c, width_choices_for(c)) for n, c in layers.items()),
        ties=tuple(ties),
        default_resolution=default_resolution,
    )
