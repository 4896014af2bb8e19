"""Evaluators on frozen features: weighted kNN and a linear probe, on in-memory evaluation data, and
the baselines every accuracy stands beside (the untrained network, raw pixels)."""

from supernet.evaluation.baselines import raw_pixel_probe, untrained_network
from supernet.evaluation.data import EvalData, ImageBank, prepare_eval_data
from supernet.evaluation.knn import (
           embed_tensor,
           knn_accuracy,
           knn_predict,
           knn_score,
           raw_pixel_knn,
)
from supernet.evaluation.linear import linear_probe

__all__ = ["EvalData", "ImageBank", "embed_tensor", "knn_accuracy", "knn_predict", "knn_score", "linear_probe",
           "prepare_eval_data", "raw_pixel_knn", "raw_pixel_probe", "untrained_network"]
