"""Evaluators on frozen features: weighted kNN on in-memory evaluation data."""

from supernet.evaluation.data import EvalData, prepare_eval_data
from supernet.evaluation.knn import embed, embed_tensor, knn_accuracy, knn_predict, knn_score

__all__ = ["EvalData", "embed", "embed_tensor", "knn_accuracy", "knn_predict", "knn_score", "prepare_eval_data"]
