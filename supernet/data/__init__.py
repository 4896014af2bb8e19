"""Data: labeled image sets and their splits, view sampling, the seeded training order."""

from supernet.data.datasets import DATASETS, DataError, ImageData, load_image_data
from supernet.data.views import build_views, eval_transform

__all__ = ["DATASETS", "DataError", "ImageData", "build_views", "eval_transform", "load_image_data"]
