"""Evaluators on frozen features: weighted kNN (and, in nas.evaluate, a linear probe)."""

from supernet.evaluation.knn import embed, knn_accuracy, knn_predict

__all__ = ["embed", "knn_accuracy", "knn_predict"]
