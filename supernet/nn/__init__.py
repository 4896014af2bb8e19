"""The network: slicing ops, blocks, dynamic gates, supernet models, BN recalibration, FLOPs, heads."""

from supernet.nn.bn import recalibrate_bn
from supernet.nn.flops import (
           FLOP_CONVENTION,
           count_flops,
           count_params,
           effective_flops,
           static_flops,
)
from supernet.nn.models import (
           MobileNetV2SuperNet,
           ResNetSuperNet,
           SuperNet,
           build_supernet,
)
from supernet.nn.vit import ViTSuperNet

__all__ = ["FLOP_CONVENTION", "MobileNetV2SuperNet", "ResNetSuperNet", "SuperNet", "ViTSuperNet", "build_supernet",
           "count_flops", "count_params", "effective_flops", "recalibrate_bn", "static_flops"]
