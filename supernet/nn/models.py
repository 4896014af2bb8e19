"""Weight-sharing supernets built from a :class:`search_spaces.SearchSpace`.

At maximum width with gates off, ``resnet18/34/50`` and ``mobilenet_v2`` are torchvision's
architectures: same module names, parameter counts and outputs, so a torchvision ``state_dict``
loads (``with_gates=False``, ``num_classes=1000``).

Supernet API (Once-for-All's vocabulary): ``set_active(cfg)``, ``set_max()``, ``set_min()``,
``sample_active(rng)``, ``extract(cfg)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import SearchSpace, SubnetConfig, get_space
from supernet.nn.blocks import (
    BasicBlock,
    Bottleneck,
    ConvBNAct,
    GatedBlock,
    InvertedResidual,
)
from supernet.nn.gates import ChannelGate, GateOptions
from supernet.nn.ops import DynamicBatchNorm2d, DynamicConv2d, DynamicLinear

GateMode = Literal["masked", "gathered"]


class SuperNet(nn.Module):
    """Base class: width bindings, gates, activation of configs and extraction.

    Subclasses build their layers and call :meth:`_bind` for every conv whose output width a
    searchable layer sets. ``forward(x)`` returns logits when ``num_classes > 0``, else the pooled
    features (B, C_last') that self-supervised heads consume.
    """

    def __init__(self, space: SearchSpace, *, num_classes: int, with_gates: bool,
                 gate_options: GateOptions | None = None) -> None:
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.with_gates = with_gates
        self.gate_options = gate_options or GateOptions()
        self._bindings: list[tuple[str, DynamicConv2d]] = []
        self.active_config: SubnetConfig | None = None
        self.source_config: SubnetConfig | None = None  # set on extracted networks

    # -- construction helpers ----------------------------------------------------------------
    def _bind(self, layer_name: str, conv: DynamicConv2d) -> None:
        self._bindings.append((layer_name, conv))

    def _gate_hidden(self, block_name: str) -> int | None:
        spec = next(b for b in self.space.blocks if b.name == block_name)
        return spec.gate_hidden_channels if (self.with_gates and spec.gated) else None

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
        for gate in self.modules():
            if isinstance(gate, ChannelGate):
                gate.init_bias = self.gate_options.init_bias
                gate.reset_parameters()
        if self.with_gates and self.gate_options.separate_norms:
            for block in self.gated_blocks():
                block.separate_gated_norms()

    # -- the active sub-network --------------------------------------------------------------
    def gated_blocks(self) -> Iterator[GatedBlock]:
        return (m for m in self.modules() if isinstance(m, GatedBlock) and m.gate is not None)

    def set_active(self, cfg: SubnetConfig) -> None:
        """Run as the sub-network ``cfg`` from now on (validated against this supernet's space)."""
        self._check(cfg)
        for layer_name, conv in self._bindings:
            conv.active_out = cfg.channels[layer_name]
        blocks = dict(self.named_modules())
        for spec in self.space.blocks:
            block = blocks[spec.name]
            assert isinstance(block, GatedBlock)
            block.gate_threshold = None if cfg.gate_thresholds is None else cfg.gate_thresholds.get(spec.name)
            if block.gate is not None:
                block.gate.fc2.active_out = cfg.channels[spec.gated_layer]
        self.active_config = cfg

    def _check(self, cfg: SubnetConfig) -> None:
        self.space.validate(cfg)
        if cfg.gate_thresholds is not None and not self.with_gates:
            raise ValueError("gate_thresholds: this network was built without gates; use gate_thresholds=null")

    def set_max(self) -> SubnetConfig:
        cfg = self.space.max_config()
        self.set_active(cfg)
        return cfg

    def set_min(self) -> SubnetConfig:
        cfg = self.space.min_config()
        self.set_active(cfg)
        return cfg

    def sample_active(self, rng: np.random.Generator, **sample_kwargs: object) -> SubnetConfig:
        """Activate (and return) a random sub-network; keyword arguments go to ``space.sample``."""
        cfg = self.space.sample(rng, **sample_kwargs)  # type: ignore[arg-type]
        self.set_active(cfg)
        return cfg

    def set_gate_mode(self, mode: GateMode) -> None:
        """``"masked"`` (batched; training and calibration) or ``"gathered"`` (batch-1 inference).

        Entering ``"gathered"`` folds each active gated block's BatchNorms on its gated channels into the
        convolutions before them (cached, see :mod:`supernet.nn.blocks`); ``"masked"`` drops the cache.
        """
        if mode not in ("masked", "gathered"):
            raise ValueError(f"gate mode: {mode!r} is not valid; expected 'masked' or 'gathered'")
        for block in self.gated_blocks():
            block.gather = mode == "gathered"
            if block.gather:
                block.prepare_gathered()
            else:
                block.release_gathered()

    @property
    def gate_mode(self) -> GateMode:
        return "gathered" if any(block.gather for block in self.gated_blocks()) else "masked"

    def gate_flops_saved(self) -> torch.Tensor | None:
        """(B,) FLOPs the gates skipped per input in the last masked forward; None if gates were off."""
        saved = [s for s in (block.flops_saved() for block in self.gated_blocks()) if s is not None]
        return torch.stack(saved).sum(dim=0) if saved else None

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features of the active sub-network."""
        cfg = self.active_config or self.space.max_config()
        return cfg.channels[self.space.head_layer or self.space.blocks[-1].out_layer]

    # -- extraction --------------------------------------------------------------------------
    def extract(self, cfg: SubnetConfig) -> SuperNet:
        """A standalone network of ``cfg``'s shape holding copies of the sliced weights.

        Its outputs equal this supernet's at ``set_active(cfg)``; it has gates only if ``cfg``
        has gate thresholds.
        """
        self._check(cfg)
        narrow = self.space.narrow(cfg.channels)
        options = replace(self.gate_options, separate_norms=self.gate_options.separate_norms and cfg.gated)
        network = type(self)(narrow, num_classes=self.num_classes, with_gates=cfg.gated, gate_options=options)
        source = self.state_dict()
        sliced = {
            name: source[name][tuple(slice(0, size) for size in tensor.shape)].clone()
            for name, tensor in network.state_dict().items()
        }
        network.load_state_dict(sliced)
        network.set_active(narrow.config(cfg.channels, cfg.gate_thresholds, cfg.resolution))
        network.source_config = cfg
        network.train(self.training)
        return network


class ResNetSuperNet(SuperNet):
    """ResNet (basic or bottleneck blocks; ImageNet or CIFAR stem) from a ``family="resnet"`` space."""

    def __init__(self, space: SearchSpace, *, num_classes: int = 0, with_gates: bool = True,
                 gate_options: GateOptions | None = None) -> None:
        super().__init__(space, num_classes=num_classes, with_gates=with_gates, gate_options=gate_options)
        width = {layer.name: layer.max_channels for layer in space.layers}
        stem_width = width[space.stem_layer]
        self.conv1 = DynamicConv2d(
            3, stem_width, space.stem_kernel, stride=space.stem_stride, padding=space.stem_kernel // 2
        )
        self._bind(space.stem_layer, self.conv1)
        self.bn1 = DynamicBatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if space.stem_max_pool else nn.Identity()
        stages: dict[str, list[nn.Module]] = {}
        for spec in space.blocks:
            in_channels = width[spec.in_layer]
            common = dict(
                stride=spec.stride,
                downsample=spec.shortcut_layer is not None,
                gate_hidden_channels=self._gate_hidden(spec.name),
            )
            if spec.kind == "bottleneck":
                block: GatedBlock = Bottleneck(
                    in_channels, (width[spec.inner_layers[0]], width[spec.inner_layers[1]]), width[spec.out_layer],
                    **common,
                )
                convs = (block.conv1, block.conv2, block.conv3)
            else:
                block = BasicBlock(in_channels, width[spec.inner_layers[0]], width[spec.out_layer], **common)
                convs = (block.conv1, block.conv2)
            for layer_name, conv in zip((*spec.inner_layers, spec.out_layer), convs):
                self._bind(layer_name, conv)
            if spec.shortcut_layer is not None:
                self._bind(spec.shortcut_layer, block.downsample[0])
            stages.setdefault(spec.name.split(".")[0], []).append(block)
        for stage_name, blocks in stages.items():
            self.add_module(stage_name, nn.Sequential(*blocks))
        self.stage_names = tuple(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_width = width[space.blocks[-1].out_layer]
        self.fc = DynamicLinear(last_width, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C_last')
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


class MobileNetV2SuperNet(SuperNet):
    """MobileNetV2 from a ``family="mobilenet_v2"`` space; torchvision's ``features``/``classifier`` layout."""

    def __init__(self, space: SearchSpace, *, num_classes: int = 0, with_gates: bool = True, dropout: float = 0.2,
                 gate_options: GateOptions | None = None) -> None:
        super().__init__(space, num_classes=num_classes, with_gates=with_gates, gate_options=gate_options)
        width = {layer.name: layer.max_channels for layer in space.layers}
        stem = ConvBNAct(3, width[space.stem_layer], space.stem_kernel, stride=space.stem_stride)
        self._bind(space.stem_layer, stem[0])
        features: list[nn.Module] = [stem]
        for spec in space.blocks:
            expanded = width[spec.inner_layers[0]] if spec.inner_layers else None
            block = InvertedResidual(
                width[spec.in_layer], expanded, width[spec.out_layer], stride=spec.stride,
                residual=spec.has_residual, gate_hidden_channels=self._gate_hidden(spec.name),
            )
            if spec.inner_layers:
                self._bind(spec.inner_layers[0], block.conv[0][0])
            self._bind(spec.out_layer, block.conv[-2])
            features.append(block)
        assert space.head_layer is not None
        head = ConvBNAct(width[space.blocks[-1].out_layer], width[space.head_layer], 1)
        self._bind(space.head_layer, head[0])
        features.append(head)
        self.features = nn.Sequential(*features)
        self.classifier = (
            nn.Sequential(nn.Dropout(p=dropout), DynamicLinear(width[space.head_layer], num_classes))
            if num_classes > 0
            else nn.Identity()
        )
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), (1, 1)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))


_FAMILIES: dict[str, type[SuperNet]] = {"resnet": ResNetSuperNet, "mobilenet_v2": MobileNetV2SuperNet}


def build_supernet(
    space: str | SearchSpace, *, num_classes: int = 0, with_gates: bool = True, gate_options: GateOptions | None = None
) -> SuperNet:
    """The supernet of a search space (by name or spec), activated at maximum width, gates off.

    >>> net = build_supernet("tiny")
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 64])
    """
    if isinstance(space, str):
        space = get_space(space)
    family: type[SuperNet]
    if space.family == "vit":  # imported here: supernet.nn.vit builds on this module's SuperNet
        from supernet.nn.vit import ViTSuperNet

        family = ViTSuperNet
    else:
        family = _FAMILIES[space.family]
    network = family(space, num_classes=num_classes, with_gates=with_gates, gate_options=gate_options)
    network.set_max()
    return network


