"""The weight-sharing supernet: slicing ops, gates, models, BN recalibration, FLOPs."""

from supernet.bn import recalibrate_bn
from supernet.models import MobileNetV2SuperNet, ResNetSuperNet, SuperNet, build_supernet

__all__ = ["MobileNetV2SuperNet", "ResNetSuperNet", "SuperNet", "build_supernet", "recalibrate_bn"]
