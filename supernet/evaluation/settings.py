"""How a sub-network's frozen features are scored: one declaration for training and search.

``python -m supernet.train`` monitors kNN with these settings (``knn.*``) and ``nas.search``,
``nas.export`` and ``nas.evaluate`` score with them (``oracle.*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from supernet.settings import Rules, at_least, optional, positive


@dataclass
class KnnSettings:
    """BN recalibration images, the labeled bank, the validation split, the weighted kNN (DESIGN.md §4)."""

    calibration_images: int = 2000  # BN recalibration images from the training split, fixed seed (Once-for-All)
    bank_size: int = 5000  # labeled training images that vote
    val_size: Optional[int] = None  # held-out images scored; null = all of them
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 256
    seed: int = 0  # draws the calibration, bank and validation images

    RULES: ClassVar[Rules] = {
        "calibration_images": at_least(1), "bank_size": at_least(1), "val_size": optional(at_least(1)),
        "k": at_least(1), "temperature": positive, "batch_size": at_least(2),
    }
