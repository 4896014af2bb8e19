"""Evaluators on frozen features: weighted kNN and a linear probe, on in-memory evaluation data."""

from supernet.evaluation.data import EvalData, prepare_eval_data
from supernet.evaluation.knn import (
           embed,
           embed_tensor,
           knn_accuracy,
           knn_predict,
           knn_score,
)
from supernet.evaluation.linear import linear_probe

__all__ = ["EvalData", "embed", "embed_tensor", "knn_accuracy", "knn_predict", "knn_score", "linear_probe",
           "prepare_eval_data"]
