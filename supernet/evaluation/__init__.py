"""Evaluators: weighted kNN and an L-BFGS linear probe on frozen features (the fast protocol), the
oracle's finer scores of the same features and the rank correlation that judges them, the
standard linear evaluation, SlimCLR's switchable probe and SSLight's semi-supervised fine-tuning on
in-memory uint8 evaluation data, and the baselines every accuracy stands beside (the untrained
network, raw pixels)."""

from supernet.evaluation.augment import random_resized_crop
from supernet.evaluation.baselines import (
           raw_pixel_linear_evaluation,
           raw_pixel_probe,
           raw_pixel_semi_supervised,
           untrained_network,
           untrained_supernet,
)
from supernet.evaluation.data import EvalData, ImageBank, prepare_eval_data
from supernet.evaluation.knn import (
           embed_tensor,
           knn_accuracy,
           knn_predict,
           knn_score,
           raw_pixel_knn,
)
from supernet.evaluation.linear import LinearHead, fit_linear_head, linear_probe
from supernet.evaluation.protocols import (
           ProtocolReport,
           ProtocolScore,
           fit_heads,
           linear_evaluation,
           scaled_lr,
           score_heads,
)
from supernet.evaluation.ranking import kendall_tau_b
from supernet.evaluation.scores import (
           SCORE_KINDS,
           ImageScores,
           knn_image_scores,
           linear_cka,
           probe_image_scores,
)
from supernet.evaluation.semi import (
           LabelFractionScore,
           class_balanced_subset,
           semi_supervised_evaluation,
)
from supernet.evaluation.switchable import (
           switchable_linear_probe,
           width_label,
           width_networks,
)

__all__ = ["SCORE_KINDS", "EvalData", "ImageBank", "ImageScores", "LabelFractionScore", "LinearHead", "ProtocolReport",
           "ProtocolScore", "class_balanced_subset", "embed_tensor", "fit_heads", "fit_linear_head", "kendall_tau_b",
           "knn_accuracy", "knn_image_scores", "knn_predict", "knn_score", "linear_cka", "linear_evaluation", "linear_probe",
           "probe_image_scores",
           "prepare_eval_data", "random_resized_crop", "raw_pixel_knn", "raw_pixel_linear_evaluation",
           "raw_pixel_probe", "raw_pixel_semi_supervised", "scaled_lr", "score_heads", "semi_supervised_evaluation",
           "switchable_linear_probe", "untrained_network", "untrained_supernet", "width_label", "width_networks"]
