"""The weight-sharing supernet and its self-supervised training.

Subpackages: ``nn`` (the network), ``data`` (images and views), ``ssl`` and ``losses`` (the
methods), ``training`` (the loop), ``evaluation`` (kNN and linear probes), ``io`` (checkpoints and
files). Entry points: ``python -m supernet.train`` and ``python -m supernet.summary``.
"""

from supernet.nn import (
    MobileNetV2SuperNet,
    ResNetSuperNet,
    SuperNet,
    build_supernet,
    recalibrate_bn,
)

__all__ = ["MobileNetV2SuperNet", "ResNetSuperNet", "SuperNet", "build_supernet", "recalibrate_bn"]
