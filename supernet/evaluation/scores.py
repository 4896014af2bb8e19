"""Scores of a sub-network's frozen features that rank it more finely than kNN top-1 (issue 23).

Top-1 on a validation split counts whole images: on N images it moves in steps of 1/N, and near
50 % its standard error is sqrt(0.25 / N) (1.1 points on 2,000 images), so sub-networks a point
apart tie or swap at random. The CVPR 2021 supernet-track winners ranked sub-networks by a loss,
not by top-1 (DESIGN.md §2). Every score here is "higher is better" and is computed from features
already embedded once (bank (N, D), bank labels (N,), validation features (Q, D) and labels (Q,)):

``knn_top1``
    Weighted kNN top-1 (Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination"; DINO's ``eval_knn.py``): each of the k most cosine-similar bank images votes
    exp(cos / T) for its class; the largest vote wins. The oracle's score before issue 23.
``knn_loglik``
    The kNN classifier's mean log-likelihood of the true class: the votes normalised to a class
    distribution p, floored as q = (p + f) / (1 + C f) (f = :data:`VOTE_FLOOR`, C classes) so a class
    without a vote keeps a finite log, log q[true class] averaged over the images (the negative of
    the kNN's cross-entropy, the "loss" to rank by).
``knn_vote``
    The mean (floored) vote share q[true class]: the kNN's expected accuracy when it answers at
    random in proportion to its votes.
``probe_top1``, ``probe_loglik``
    A logistic-regression probe (:func:`supernet.evaluation.linear.fit_linear_head`: standardised
    features, full-batch L-BFGS) fitted on the bank and scored on the validation images: top-1 and
    the mean log-softmax of the true class (the linear evaluation protocol of SimCLR, Chen et al.
    2020, on cached features).
``agreement``
    Label-free: linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
    Revisited", ICML) between the sub-network's and the full network's features of the same images.

Deterministic: the kNN keeps, of bank images tied for its last places, the lower bank indices
(:func:`supernet.evaluation.knn.nearest_neighbours`); a tie between classes goes to the lower class
index (``argmax`` returns the first maximum); the probe starts from a seeded initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from supernet.evaluation.knn import knn_votes_chunked
from supernet.evaluation.linear import fit_linear_head

__all__ = ["DEFAULT_SCORE", "KNN_SCORES", "PROBE_SCORES", "SCORE_KINDS", "VOTE_FLOOR", "ImageScores", "knn_image_scores",
           "knn_summary", "linear_cka", "probe_image_scores", "probe_summary", "vote_log_probabilities"]

KNN_SCORES = ("knn_top1", "knn_loglik", "knn_vote")
PROBE_SCORES = ("probe_top1", "probe_loglik")
SCORE_KINDS = (*KNN_SCORES, *PROBE_SCORES, "agreement")
# What the search ranks by unless oracle.score says otherwise: of every kind, the one whose order of 20 CIFAR-10
# sub-networks agreed best with a probe judged on 10,000 unseen images (tau 0.93) and between two oracle seeds
# (0.95), with a 10,000-image bank and validation split (README; RESULTS §6.1).
DEFAULT_SCORE = "probe_top1"
VOTE_FLOOR = 1e-3  # of a class's vote share: log q >= log(f / (1 + C f)), -6.9 for ten classes


@dataclass(frozen=True)
class ImageScores:
    """A classifier's answer on each of Q images, each field (Q,): ``correct`` (bool: its most likely
    class is the true one), ``probability`` and ``log_likelihood`` of the true class (float64)."""

    correct: torch.Tensor
    probability: torch.Tensor
    log_likelihood: torch.Tensor

    def __len__(self) -> int:
        return self.correct.shape[0]

    @classmethod
    def of(cls, log_probabilities: torch.Tensor, labels: torch.Tensor) -> ImageScores:
        """From log-probabilities (Q, C) of every class and the true labels (Q,); a tie goes to the lower class."""
        labels = labels.long().to(log_probabilities.device)
        log_likelihood = log_probabilities.gather(1, labels[:, None])[:, 0].double().cpu()
        correct = (log_probabilities.argmax(dim=1) == labels).cpu()  # argmax: the first of equal maxima
        return cls(correct, log_likelihood.exp(), log_likelihood)

    @classmethod
    def cat(cls, parts: Sequence[ImageScores]) -> ImageScores:
        return cls(*(torch.cat([getattr(part, name) for part in parts]) for name in ("correct", "probability",
                                                                                     "log_likelihood")))

    @classmethod
    def scatter(cls, parts: Sequence[tuple[torch.Tensor, ImageScores]], total: int) -> ImageScores:
        """One (``total``,) record from parts that each cover the rows a boolean mask (total,) selects (e.g. the
        validation images of each route of a routed network)."""
        correct = torch.zeros(total, dtype=torch.bool)
        probability = torch.zeros(total, dtype=torch.float64)
        log_likelihood = torch.zeros(total, dtype=torch.float64)
        covered = torch.zeros(total, dtype=torch.bool)
        for rows, part in parts:
            correct[rows], probability[rows], log_likelihood[rows] = part.correct, part.probability, part.log_likelihood
            covered |= rows
        if not bool(covered.all()):
            raise ValueError(f"ImageScores.scatter: {int((~covered).sum())} of {total} rows are in no part")
        return cls(correct, probability, log_likelihood)


def vote_log_probabilities(votes: torch.Tensor, *, floor: float = VOTE_FLOOR) -> torch.Tensor:
    """log q (Q, C) of votes (Q, C): q = (p + floor) / (1 + C floor), p the votes normalised per row.

    >>> vote_log_probabilities(torch.tensor([[3.0, 1.0, 0.0]]), floor=0.0).exp()
    tensor([[0.7500, 0.2500, 0.0000]], dtype=torch.float64)
    """
    votes = votes.double()
    shares = votes / votes.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return ((shares + floor) / (1 + votes.shape[1] * floor)).log()


def knn_image_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    *,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    floor: float = VOTE_FLOOR,
    chunk_size: int = 1024,
) -> ImageScores:
    """The weighted kNN's answer on each query: bank (N, D) with labels (N,) votes for queries (Q, D) with
    labels (Q,); cosine similarity, the k nearest, votes exp(cos / T), shares floored by ``floor``.

    >>> bank, labels = torch.eye(2), torch.tensor([0, 1])
    >>> scores = knn_image_scores(bank, labels, torch.tensor([[1.0, 0.0]]), torch.tensor([0]), num_classes=2, k=1)
    >>> bool(scores.correct[0]), round(float(scores.probability[0]), 4)
    (True, 0.999)
    """
    votes = knn_votes_chunked(lambda: [bank], bank_labels, queries, num_classes=num_classes, k=k,
                              temperature=temperature, chunk_size=chunk_size)
    parts = [ImageScores.of(vote_log_probabilities(chunk, floor=floor), labels)
             for chunk, labels in zip(votes, query_labels.split(chunk_size))]
    return ImageScores.cat(parts) if parts else ImageScores.of(torch.zeros(0, num_classes), query_labels[:0])


def probe_image_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> ImageScores:
    """A logistic-regression probe's answer on each image: fitted on ``train_features`` (N, D) with labels (N,)
    (:func:`supernet.evaluation.linear.fit_linear_head`, on their device), applied to ``features`` (Q, D)
    with labels (Q,); log-probabilities by log-softmax."""
    if train_features.shape[1] != features.shape[1]:
        raise ValueError(f"probe_image_scores: train features have {train_features.shape[1]} dimensions, "
                         f"the scored features {features.shape[1]}; expected the same")
    head = fit_linear_head(train_features, train_labels, num_classes=num_classes, epochs=epochs, lr=lr,
                           weight_decay=weight_decay, seed=seed)
    with torch.no_grad():
        return ImageScores.of(F.log_softmax(head.logits(features), dim=1), labels)


def knn_summary(scores: ImageScores) -> dict[str, float]:
    """``knn_top1``, ``knn_loglik`` and ``knn_vote``: the means of a kNN's :class:`ImageScores`."""
    return {"knn_top1": _mean(scores.correct), "knn_loglik": _mean(scores.log_likelihood),
            "knn_vote": _mean(scores.probability)}


def probe_summary(scores: ImageScores) -> dict[str, float]:
    """``probe_top1`` and ``probe_loglik``: the means of a probe's :class:`ImageScores`."""
    return {"probe_top1": _mean(scores.correct), "probe_loglik": _mean(scores.log_likelihood)}


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment in [0, 1] of two representations of the same N images, x (N, D1) and
    y (N, D2) (Kornblith et al. 2019, eq. for linear HSIC): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) with
    every column centred. Invariant to rotations and isotropic scaling of either; 0 if either is constant.

    >>> x = torch.randn(50, 4)
    >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(4, 4))[0]), 6)
    1.0
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: expected (N, D1) and (N, D2) features of the same images, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    x = x.double() - x.double().mean(dim=0)
    y = y.double().to(x.device) - y.double().to(x.device).mean(dim=0)
    denominator = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if float(denominator) == 0.0:
        return 0.0
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2 / denominator)


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean()) if values.numel() else float("nan")
